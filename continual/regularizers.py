"""Regularisers against forgetting, as plugins that share one small interface.

Every regulariser is a trainer plugin (:class:`metarl.plugins.Plugin`), so any trainer (PPO,
RL², the MAML family) accepts it: on every update the trainer adds ``penalty(params)`` to its loss
(for a meta-learner: the outer loss at the meta-initialisation), passes its gradients through
``mask_gradients`` and calls ``after_optimizer_step`` after the optimiser step; at the end of a
stage ``end_stage`` calls ``consolidate(params, context)`` with the stage's data. ``params`` is a
``{name: tensor}`` dict (``dict(module.named_parameters())``, or functional parameters under
``torch.func``), so penalties are differentiable under ``grad`` and ``vmap``.

- :class:`FineTuning`: no regularisation (the lower baseline).
- :class:`L2Anchor`: ``λ Σ_i (θ_i − θ*_i)²`` to the parameters at the last consolidation.
- :class:`EWC`: online elastic weight consolidation (Kirkpatrick et al. 2017; the online form of
  Schwarz et al. 2018), ``λ Σ_i F̃_i (θ_i − θ*_i)²``.
- :class:`continual.packnet.PackNet`: iterative pruning with frozen per-task weights.
- :class:`RegularizerSet`: several of the above as one.

Every ``state_dict`` holds plain tensors and JSON-able values, with a schema version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from metarl.plugins import Plugin, StageEnd, mask_module_gradients
from metarl.trajectory import Trajectory

from .fisher import FISHER_KINDS, fisher_diagonal

__all__ = [
    "EWC",
    "REGULARIZER_SCHEMA_VERSION",
    "ConsolidationContext",
    "FineTuning",
    "L2Anchor",
    "Regularizer",
    "RegularizerSet",
]

REGULARIZER_SCHEMA_VERSION = 1


@dataclass
class ConsolidationContext:
    """What a regulariser may need at the end of a stage."""

    policy: torch.nn.Module | None = None
    """the policy (EWC evaluates its Fisher)"""
    trajectories: Trajectory | Sequence[Trajectory] | None = None
    """data of the stage that ended (EWC's Fisher is averaged over it)"""
    stage: int | None = None
    """the stage that ended"""
    generator: torch.Generator | None = None
    """randomness (EWC's true Fisher samples actions)"""


def _zero_like_params(params: Mapping[str, Tensor]) -> Tensor:
    for p in params.values():
        return p.new_zeros(())
    return torch.zeros(())


def _detached(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


def _check_params(params: Any, where: str) -> Mapping[str, Tensor]:
    if not isinstance(params, Mapping) or not all(isinstance(v, Tensor) for v in params.values()):
        raise ValueError(f"{where}: params must be a dict name -> tensor")
    return params


def _matching(params: Mapping[str, Tensor], reference: Mapping[str, Tensor], what: str):
    """``(name, param, ref)`` for every name of ``reference``; a missing name or another shape is
    an error (the regulariser was consolidated on a different model)."""
    for name, ref in reference.items():
        if name not in params:
            raise ValueError(f"{what} has an entry for {name!r}, which params lack")
        p = params[name]
        if p.shape != ref.shape:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(ref.shape)}, the parameter {tuple(p.shape)}"
            )
        yield name, p, ref.to(device=p.device, dtype=p.dtype)


def _check_state(state: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(state, Mapping) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"expected a {kind!r} regulariser state, got {got!r}")
    if state.get("schema_version") != REGULARIZER_SCHEMA_VERSION:
        raise ValueError(
            f"{kind} state schema_version {state.get('schema_version')} is not supported "
            f"(this code reads {REGULARIZER_SCHEMA_VERSION})"
        )
    return state


class Regularizer(Plugin):
    """The regulariser interface; every hook defaults to "do nothing". As a trainer plugin:
    ``loss`` is :meth:`penalty` (logged as ``penalty``), ``after_step`` is
    :meth:`after_optimizer_step` and ``end_stage`` is :meth:`consolidate` on the stage's last
    ``fisher_batches`` batches (one trajectory per sequence)."""

    kind = "regularizer"
    name = "regularizer"
    fisher_batches = 2
    """the stage's last batches that ``end_stage`` hands to :meth:`consolidate`"""
    needs_data = False
    """``end_stage`` skips consolidation when there is no data (EWC: nothing to estimate from)"""

    # -- as a trainer plugin --------------------------------------------------------------------
    def loss(self, params: Mapping[str, Tensor], stats: dict[str, float]) -> Tensor:
        value = self.penalty(params)
        stats["penalty"] = stats.get("penalty", 0.0) + float(value.detach())
        return value

    def after_step(self, params: Mapping[str, Tensor]) -> None:
        self.after_optimizer_step(params)

    def end_stage(self, end: StageEnd) -> None:
        data = end.data[-self.fisher_batches :] or end.discarded[-1:]
        if not data and self.needs_data:
            return
        # one trajectory per sequence: the same Fisher (an average over all steps), but
        # fisher_diagonal's per-step Jacobian then costs B·T² instead of (B·T)²
        per_sequence = [t[[b]] for t in data for b in range(t.B)]
        context = ConsolidationContext(
            policy=end.policy,
            trajectories=per_sequence or None,
            stage=end.stage,
            generator=end.generator,
        )
        self.consolidate(end.params, context)

    # -- the regulariser ------------------------------------------------------------------------

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        """A scalar added to the loss (differentiable in ``params``)."""
        return _zero_like_params(_check_params(params, f"{self.kind}.penalty"))

    def consolidate(
        self, params: Mapping[str, Tensor], context: ConsolidationContext | None = None
    ) -> None:
        """Called once at the end of a stage, with the parameters the stage ended with."""

    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Gradients as the optimiser should see them (pure; default: unchanged)."""
        return dict(grads)

    def mask_module_gradients(self, module: torch.nn.Module) -> None:
        """In place on ``module``'s ``.grad``: :meth:`mask_gradients` for the imperative path."""
        mask_module_gradients(module, self.mask_gradients)

    names: list[str] | None = None
    """the regularised parameters (None: every entry of the params consolidated)"""

    def _select(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.names is None:
            return dict(params)
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"params lack the regularised parameters {missing}")
        return {n: params[n] for n in self.names}

    def after_optimizer_step(self, params: Mapping[str, Tensor]) -> None:
        """Called after each optimiser step, may fix parameters in place (PackNet does)."""

    def state_dict(self) -> dict[str, Any]:
        return {"schema_version": REGULARIZER_SCHEMA_VERSION, "kind": self.kind}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state(state, self.kind)


class FineTuning(Regularizer):
    """Plain fine-tuning: no penalty, no masks (the forgetting baseline)."""

    kind = "finetuning"


class L2Anchor(Regularizer):
    """``penalty = λ Σ_i (θ_i − θ*_i)²`` with ``θ*`` the parameters at the last consolidation
    (zero before the first). Its gradient is ``2λ(θ − θ*)``.

    Args:
        strength: λ.
        names: parameters to anchor (default: all that ``consolidate`` sees).
    """

    kind = "l2"

    def __init__(self, strength: float, names: Iterable[str] | None = None):
        if not (isinstance(strength, (int, float)) and strength >= 0):
            raise ValueError(f"strength must be a number >= 0, got {strength!r}")
        self.strength = float(strength)
        self.names = None if names is None else list(names)
        self.anchor: dict[str, Tensor] = {}
        self.num_consolidations = 0

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        params = _check_params(params, "l2.penalty")
        total = _zero_like_params(params)
        for _, p, a in _matching(params, self.anchor, "anchor"):
            total = total + ((p - a) ** 2).sum()
        return self.strength * total

    def consolidate(
        self, params: Mapping[str, Tensor], context: ConsolidationContext | None = None
    ) -> None:
        self.anchor = _detached(self._select(_check_params(params, "l2.consolidate")))
        self.num_consolidations += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "strength": self.strength,
            "names": self.names,
            "num_consolidations": self.num_consolidations,
            "anchor": {n: a.clone() for n, a in self.anchor.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state(state, self.kind)
        self.strength, self.names = float(state["strength"]), state["names"]
        self.num_consolidations = int(state["num_consolidations"])
        self.anchor = {n: a.clone() for n, a in state["anchor"].items()}


class EWC(Regularizer):
    """Online elastic weight consolidation.

    At the end of stage ``k`` (``consolidate``) the diagonal Fisher ``F_k`` of the policy at the
    stage's final parameters ``θ*_k`` is estimated from the stage's trajectories
    (:func:`continual.fisher.fisher_diagonal`: the **empirical** Fisher, squared gradients of
    ``log π(a_taken | h)``, by default; ``fisher="true"`` samples the actions from π instead),
    and the running estimate becomes ``F̃_k = γ F̃_{k−1} + F_k`` (Schwarz et al. 2018). The
    penalty pulls towards the latest anchor::

        penalty(θ) = λ Σ_i F̃_i (θ_i − θ*_i)²         ∇penalty = 2 λ F̃ (θ − θ*)

    (no ½ in front: λ here is half the λ of the papers.) Parameters with ``F̃ = 0`` (the
    critic, whose parameters do not enter ``log π``) are not held back.

    Args:
        strength: λ.
        decay: γ in [0, 1] (1: Fishers add up; 0: only the last stage's counts).
        fisher: ``"empirical"`` or ``"true"``.
        fisher_samples: actions drawn per step for the true Fisher.
        names: parameters to protect (default: every entry of the ``params`` consolidated).
        fisher_batches: as a trainer plugin, the stage's last batches the Fisher averages over.
    """

    kind = "ewc"
    needs_data = True

    def __init__(
        self,
        strength: float,
        decay: float = 1.0,
        fisher: Literal["empirical", "true"] = "empirical",
        fisher_samples: int = 1,
        names: Iterable[str] | None = None,
        fisher_batches: int = 2,
    ):
        if not (isinstance(strength, (int, float)) and strength >= 0):
            raise ValueError(f"strength must be a number >= 0, got {strength!r}")
        if not (isinstance(decay, (int, float)) and 0.0 <= decay <= 1.0):
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        if fisher not in FISHER_KINDS:
            raise ValueError(f"fisher must be one of {FISHER_KINDS}, got {fisher!r}")
        self.strength, self.decay, self.fisher_kind = float(strength), float(decay), fisher
        self.fisher_samples = int(fisher_samples)
        if (
            isinstance(fisher_batches, bool)
            or not isinstance(fisher_batches, int)
            or fisher_batches < 1
        ):
            raise ValueError(f"fisher_batches must be an int >= 1, got {fisher_batches!r}")
        self.fisher_batches = fisher_batches
        self.names = None if names is None else list(names)
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.num_consolidations = 0

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        params = _check_params(params, "ewc.penalty")
        total = _zero_like_params(params)
        for name, p, a in _matching(params, self.anchor, "anchor"):
            f = self.fisher[name].to(device=p.device, dtype=p.dtype)
            total = total + (f * (p - a) ** 2).sum()
        return self.strength * total

    def consolidate(
        self, params: Mapping[str, Tensor], context: ConsolidationContext | None = None
    ) -> None:
        """Estimate the Fisher at ``params`` from ``context.trajectories`` (with
        ``context.policy``), then :meth:`consolidate_fisher`."""
        if context is None or context.policy is None or context.trajectories is None:
            raise ValueError("EWC.consolidate needs a context with the policy and trajectories")
        params = _check_params(params, "ewc.consolidate")
        selected = self._select(params)
        fisher = fisher_diagonal(
            context.policy,
            context.trajectories,
            params=selected,
            kind=self.fisher_kind,
            samples=self.fisher_samples,
            generator=context.generator,
        )
        self.consolidate_fisher(selected, fisher)

    def consolidate_fisher(
        self, params: Mapping[str, Tensor], fisher: Mapping[str, Tensor]
    ) -> None:
        """``F̃ ← γ F̃ + fisher`` and ``θ* ← params`` from a precomputed diagonal Fisher."""
        params = _check_params(params, "ewc.consolidate_fisher")
        for name, f in fisher.items():
            if name not in params or params[name].shape != f.shape:
                raise ValueError(f"fisher[{name!r}] does not match a parameter of that shape")
            if not torch.isfinite(f).all() or (f < 0).any():
                raise ValueError(f"fisher[{name!r}] must be finite and >= 0")
        new = {n: f.detach().clone() for n, f in fisher.items()}
        for name, old in self.fisher.items():
            new[name] = self.decay * old + new[name] if name in new else self.decay * old
        self.fisher = new
        self.anchor = {n: params[n].detach().clone() for n in new}
        self.num_consolidations += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "strength": self.strength,
            "decay": self.decay,
            "fisher_kind": self.fisher_kind,
            "fisher_samples": self.fisher_samples,
            "names": self.names,
            "num_consolidations": self.num_consolidations,
            "fisher": {n: f.clone() for n, f in self.fisher.items()},
            "anchor": {n: a.clone() for n, a in self.anchor.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state(state, self.kind)
        self.strength, self.decay = float(state["strength"]), float(state["decay"])
        self.fisher_kind, self.fisher_samples = state["fisher_kind"], int(state["fisher_samples"])
        self.names = state["names"]
        self.num_consolidations = int(state["num_consolidations"])
        self.fisher = {n: f.clone() for n, f in state["fisher"].items()}
        self.anchor = {n: a.clone() for n, a in state["anchor"].items()}


class RegularizerSet(Regularizer):
    """Several regularisers as one: penalties add up; hooks run in the given order."""

    kind = "set"

    def __init__(self, members: Sequence[Regularizer]):
        if not all(isinstance(m, Regularizer) for m in members):
            raise ValueError("members must be Regularizer instances")
        self.members = list(members)

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        total = _zero_like_params(_check_params(params, "set.penalty"))
        for m in self.members:
            total = total + m.penalty(params)
        return total

    def consolidate(
        self, params: Mapping[str, Tensor], context: ConsolidationContext | None = None
    ) -> None:
        for m in self.members:
            m.consolidate(params, context)

    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(grads)
        for m in self.members:
            out = m.mask_gradients(out)
        return out

    def after_optimizer_step(self, params: Mapping[str, Tensor]) -> None:
        for m in self.members:
            m.after_optimizer_step(params)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state(state, self.kind)
        if len(state["members"]) != len(self.members):
            raise ValueError(
                f"state has {len(state['members'])} members, this set {len(self.members)}"
            )
        for m, s in zip(self.members, state["members"]):
            m.load_state_dict(s)
