"""What the population needs of a skill library, as a protocol, and how one is opened.

``metarl`` sits below ``skills``, so the population never imports it. It works against
:class:`SkillSource` (``list()``, ``get(name)``), which :class:`skills.SkillLibrary` satisfies,
and opens one through the ``metarl.skill_sources`` entry-point group: a provider registers a
``name = "module:callable"`` taking a path and returning a source (``skills`` registers
``library = "skills.source:open_library"``), and the config names the provider
(``skills.source``, default ``library``). Same mechanism as the ``metarl.commands`` group the CLI
reaches higher packages' subcommands through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from torch import Tensor

from ..providers import INSTALL_HINT, load_provider

__all__ = [
    "SKILL_SOURCES",
    "SkillLike",
    "SkillNetworkLike",
    "SkillSource",
    "SkillSpecLike",
    "open_skill_source",
    "skill_source_opener",
]

SKILL_SOURCES = "metarl.skill_sources"
"""the entry-point group of skill-source providers"""


class SkillSpecLike(Protocol):
    """The architecture of a skill, as far as the population reads it."""

    kind: str
    d_model: int
    n_layers: int
    encoder_hidden: int
    layer_kwargs: Mapping[str, Any]
    in_context: bool
    action: Mapping[str, Any]
    """``{"type": "discrete", "n": ...}`` for the skills the population can use"""

    @property
    def obs_shape(self) -> Sequence[int]: ...


class SkillNetworkLike(Protocol):
    """A skill's network: the ``SequencePolicy`` step API and its parameters."""

    def parameters(self) -> Any: ...

    def step(self, x: Tensor, state: Any, reset: Tensor | None = None) -> tuple[Any, Any]: ...

    def mode(self, out: Any) -> Tensor: ...

    def unconditioned_state_dict(self) -> dict[str, Tensor]:
        """Parameters named as in a population agent's body (no skill-conditioning inputs)."""
        ...


class SkillLike(Protocol):
    """One loaded skill."""

    name: str
    spec: SkillSpecLike
    network: SkillNetworkLike

    def initial_state(self, batch_size: int = 1) -> Any:
        """A fresh state whose ``.layers`` the network's ``step`` carries."""
        ...


class SkillSource(Protocol):
    """A collection of named skills (e.g. :class:`skills.SkillLibrary`)."""

    def list(self) -> list[str]: ...

    def get(self, name: str) -> SkillLike: ...


def skill_source_opener(provider: str) -> Callable[[str], SkillSource]:
    """The callable the ``provider`` entry point of :data:`SKILL_SOURCES` names; a
    :class:`~metarl.config.ConfigError` naming the installed ones when there is none."""
    hint = f"{INSTALL_HINT}, or set skills.source to an installed one"
    return load_provider(SKILL_SOURCES, provider, "skill source", hint)


def open_skill_source(path: str, provider: str = "library") -> SkillSource:
    """Open the skills at ``path`` with the ``provider`` registered in :data:`SKILL_SOURCES`."""
    return skill_source_opener(provider)(path)
