"""Where a run's adapted policies go: a skill sink, opened through an entry point.

A continual run grows a skill library (at each stage end, the policies adapted to a few of the
stage's tasks), but ``metarl`` and ``continual`` sit below ``skills`` and never import it. They
write through :class:`SkillSink`, opened by name from the ``metarl.skill_sinks`` entry-point
group (``skills`` registers ``library = "skills.source:open_sink"``), the same mechanism as
``metarl.skill_sources`` for reading skills and ``metarl.commands`` for subcommands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from torch import Tensor, nn

from .providers import load_provider

__all__ = ["SKILL_SINKS", "SkillSink", "skill_sink_opener"]

SKILL_SINKS = "metarl.skill_sinks"
"""the entry-point group of skill-sink providers"""


class SkillSink(Protocol):
    """What a run needs to store adapted policies as skills."""

    def add_adapted(
        self,
        policy: nn.Module,
        tasks: Sequence[Any],
        params_per_task: Sequence[Mapping[str, Tensor]],
        *,
        base_name: str,
        prefix: str,
        provenance: Mapping[str, Any],
    ) -> list[str]:
        """Store one skill per task (``params_per_task[i]`` adapted to ``tasks[i]``; the
        policy's own parameters as the shared base ``base_name``); returns the skill names."""


def skill_sink_opener(provider: str) -> Callable[[str], SkillSink]:
    """The callable the ``provider`` entry point of :data:`SKILL_SINKS` names (it takes a path);
    a :class:`~metarl.config.ConfigError` naming the installed ones when there is none."""
    return load_provider(SKILL_SINKS, provider, "skill sink")
