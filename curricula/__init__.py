"""Task sequences (CW10/CW20, quick sequences), difficulty progression and stages.

A curriculum is data: a YAML file (shipped ones live in ``curricula/data``) with named tasks and
a list of stages, each a set of tasks trained for a number of env steps.

- :func:`load_curriculum` (``"cw10"``, ``"nav2d_quadrants"``, ... or a path) validates one into a
  :class:`Curriculum`; :func:`available_curricula` lists the shipped names.
- :meth:`Curriculum.build` gives a :class:`BuiltCurriculum`: the task families, task specs, spaces
  and vector envs (with an optional task one-hot in the observation).
- :class:`StageSchedule` turns stage durations into whole learner iterations and task boundaries.
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
from .envs import BuiltCurriculum, TaskIdObservation
from .schedule import StageSchedule

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
