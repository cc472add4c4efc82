"""The skill library as a skill source for ``metarl``'s population.

``metarl`` sits below ``skills`` and never imports it; it opens skills through the
``metarl.skill_sources`` entry-point group, where this package registers
``library = "skills.source:open_library"`` (see ``pyproject.toml``). A :class:`SkillLibrary`
satisfies ``metarl.population.skill_source.SkillSource``.

It is also the sink a continual run writes its adapted policies into (``metarl.skill_sinks``:
``library = "skills.source:open_sink"``), through the extraction code (:mod:`skills.extract`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .extract import extract_task_skills
from .library import SkillLibrary

__all__ = ["LibrarySink", "open_library", "open_sink"]


def open_library(path: str | Path) -> SkillLibrary:
    """The existing skill library at ``path`` (read-only use: never creates one)."""
    return SkillLibrary.open(path)


class LibrarySink:
    """A :class:`SkillLibrary` as a ``metarl.skill_sink.SkillSink``."""

    def __init__(self, library: SkillLibrary):
        self.library = library

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
        infos = extract_task_skills(
            self.library,
            policy,
            tasks,
            params_per_task,
            base_name=base_name,
            prefix=prefix,
            source="continual-meta-learning",
            provenance=provenance,
        )
        return [info.name for info in infos]


def open_sink(path: str | Path) -> LibrarySink:
    """The skill library at ``path`` (created if missing) as a sink for a run's skills."""
    return LibrarySink(SkillLibrary.open(path, create=True))
