"""Task families: samplers of small, hashable task specs and the gymnasium envs they build.

``make_family(spec)`` builds a family from a spec string (see ``FAMILIES``); families that need
an optional dependency import it only when built and raise :class:`MissingExtraError` without it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from metarl.tasks.bandit import BanditFamily
from metarl.tasks.base import Task, TaskFamily
from metarl.tasks.cartpole import CartPoleFamily
from metarl.tasks.extras import MissingExtraError
from metarl.tasks.halfcheetah import HalfCheetahDirFamily, HalfCheetahVelFamily
from metarl.tasks.metaworld_benchmark import MetaWorldFamily
from metarl.tasks.nav2d import Nav2DFamily
from metarl.tasks.procgen_levels import ProcgenFamily


def _metaworld(benchmark: str) -> Callable[..., TaskFamily]:
    def build(arg: str | None = None, **kwargs: Any) -> TaskFamily:
        return MetaWorldFamily(benchmark, env_name=arg, **kwargs)

    return build


FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "bandit": BanditFamily,
    "nav2d": Nav2DFamily,
    "cartpole": CartPoleFamily,
    "halfcheetah-vel": HalfCheetahVelFamily,
    "halfcheetah-dir": HalfCheetahDirFamily,
    "metaworld-ml1": _metaworld("ml1"),
    "metaworld-ml10": _metaworld("ml10"),
    "metaworld-ml45": _metaworld("ml45"),
    "metaworld-mt10": _metaworld("mt10"),
    "procgen": ProcgenFamily,
}
"""Family name -> constructor. ``metaworld-ml1`` and ``procgen`` take an argument after ``:``."""

_NEEDS_ARG = {"metaworld-ml1": "metaworld-ml1:<task>-v3", "procgen": "procgen:<game>"}
VALID_SPECS = tuple(_NEEDS_ARG.get(name, name) for name in FAMILIES)


def make_family(spec: str, **kwargs: Any) -> TaskFamily:
    """Build a family from ``"bandit"``, ``"metaworld-ml1:reach-v3"``, ``"procgen:coinrun"``, ...

    ``kwargs`` go to the family's constructor (e.g. ``make_family("bandit", k=10)``).
    """
    name, sep, arg = spec.partition(":")
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown task family {spec!r}.{hint} Valid specs: {', '.join(VALID_SPECS)}"
        )
    if (name in _NEEDS_ARG) != bool(sep and arg):
        expected = _NEEDS_ARG.get(name, name)
        raise ValueError(f"task family spec {spec!r} should look like {expected!r}")
    cls = FAMILIES[name]
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        accepted = accepted[1:] if arg else accepted  # the spec's argument fills the first one
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"task family {spec!r} does not take {', '.join(unknown)} (family_kwargs); it "
                f"takes: {', '.join(accepted) or 'nothing'}"
            )
    return cls(arg, **kwargs) if arg else cls(**kwargs)


__all__ = ["FAMILIES", "MissingExtraError", "Task", "TaskFamily", "make_family"]
