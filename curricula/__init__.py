"""Task sequences (CW10/CW20, quick sequences), difficulty progression and stages.

A curriculum is data: a YAML file (shipped ones live in ``curricula/data``) with named tasks and
a list of stages, each a set of tasks trained for a number of env steps.

- :func:`load_curriculum` (``"cw10"``, ``"nav2d_quadrants"``, ... or a path) validates one into a
  :class:`Curriculum`; :func:`available_curricula` lists the shipped names.
- :meth:`Curriculum.build` gives a :class:`BuiltCurriculum`: the task families, task specs, spaces
  and vector envs (with an optional task one-hot in the observation).
- :class:`StageSchedule` turns stage durations into whole learner iterations and task boundaries.
- :mod:`curricula.continual_world`: CW10/CW20 (or any Meta-World v3 list) as one plain gymnasium
  env with a step budget per task (needs gymnasium, numpy and metaworld only).
"""

from .curriculum import (
    Curriculum,
    CurriculumError,
    Stage,
    TaskEntry,
    available_curricula,
    load_curriculum,
    parse_curriculum,
)
from .schedule import StageSchedule

# The env builders need metarl (and torch); they load on first use, so that the data layer and
# ``curricula.continual_world`` stay importable with gymnasium, numpy and metaworld alone.
_LAZY = {"BuiltCurriculum": ".envs", "TaskIdObservation": ".envs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BuiltCurriculum",
    "Curriculum",
    "CurriculumError",
    "Stage",
    "StageSchedule",
    "TaskEntry",
    "TaskIdObservation",
    "available_curricula",
    "load_curriculum",
    "parse_curriculum",
]
