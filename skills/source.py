"""The skill library as a skill source for ``metarl``'s population.

``metarl`` sits below ``skills`` and never imports it; it opens skills through the
``metarl.skill_sources`` entry-point group, where this package registers
``library = "skills.source:open_library"`` (see ``pyproject.toml``). A :class:`SkillLibrary`
satisfies ``metarl.population.skill_source.SkillSource``.
"""

from __future__ import annotations

from pathlib import Path

from .library import SkillLibrary

__all__ = ["open_library"]


def open_library(path: str | Path) -> SkillLibrary:
    """The existing skill library at ``path`` (read-only use: never creates one)."""
    return SkillLibrary.open(path)
