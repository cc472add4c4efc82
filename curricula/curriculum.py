"""A curriculum is data: named tasks and a sequence of stages, each a set of tasks trained for a
number of environment steps.

YAML layout (the files shipped in ``curricula/data/`` are examples)::

    name: nav2d_quadrants                # must match the file name for shipped curricula
    description: four goals, one per quadrant
    task_id_obs: true                    # append a one-hot of the task (its row in `tasks`)
    steps_per_stage: 16000               # default duration of a stage, in env steps
    repeat: 1                            # the stage list is run this many times (CW20 = CW10 x 2)
    defaults:                            # keys every task entry inherits unless it sets them
      family: nav2d
      family_kwargs: {max_episode_steps: 20}
      metric: return
      return_range: [-8.485, -0.424]
    tasks:
      north_east: {params: {goal: [0.3, 0.3]}}          # one explicit task of a parametric family
      hammer: {family: metaworld-ml1:hammer-v3, sample: 10}   # 10 tasks drawn from the family
    stages:
      - {name: north_east, tasks: [north_east], steps: 16000}
      - {name: ne, tasks: [ne_train], eval: [ne_test]}   # train on some tasks, score others

A stage trains on ``tasks`` and is scored (its curves, ``R``, a meta-learner's ``R_adapt``) on
``eval`` (default: ``tasks``): for a stage that is a task *distribution*, train tasks and
held-out test tasks of one region (e.g. two ``sample`` entries of a family restricted to the
region, one with ``split: train``, one with ``split: test``).

A task entry is one or more :class:`metarl.tasks.Task` specs of one family: ``params`` gives
one explicit task, ``sample: n`` draws ``n`` tasks of ``split`` with ``seed`` (for Meta-World ML1:
``n`` of the environment's 50 goal configurations). ``metric`` says how an episode is scored in
``[0, 1]``: ``success`` (Meta-World's flag at any step of the episode) or ``return`` mapped
linearly from ``return_range = [low, high]`` to ``[0, 1]`` and clipped.

:func:`load_curriculum` accepts a shipped name (``cw10``, ``nav2d_quadrants``, ...) or a path and
raises :class:`CurriculumError` naming the file and key of anything wrong. Nothing here builds an
environment; :meth:`Curriculum.build` makes the families and task specs
(:mod:`curricula.envs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "METRICS",
    "Curriculum",
    "CurriculumError",
    "Stage",
    "TaskEntry",
    "available_curricula",
    "load_curriculum",
    "parse_curriculum",
]

METRICS = ("success", "return")
_TOP_KEYS = (
    "name",
    "description",
    "task_id_obs",
    "steps_per_stage",
    "repeat",
    "defaults",
    "tasks",
    "stages",
)
_TASK_KEYS = (
    "family",
    "family_kwargs",
    "params",
    "sample",
    "split",
    "seed",
    "metric",
    "return_range",
)
_STAGE_KEYS = ("name", "tasks", "steps", "eval")


class CurriculumError(ValueError):
    """A curriculum file or dict that does not follow the layout (the message names the key)."""


@dataclass(frozen=True)
class TaskEntry:
    """One named task of a curriculum: one or more task specs of a family, and how to score it."""

    name: str
    family: str
    """task family spec for :func:`metarl.tasks.make_family`, e.g. nav2d, metaworld-ml1:push-v3"""
    family_kwargs: tuple[tuple[str, Any], ...] = ()
    """keyword arguments of the family, as sorted (key, value) pairs (hashable)"""
    params: tuple[tuple[str, Any], ...] | None = None
    """one explicit task's parameters (parametric families), or None with `sample`"""
    sample: int | None = None
    """draw this many tasks of the family (with `split` and `seed`), or None with `params`"""
    split: Literal["train", "test"] = "train"
    """which split `sample` draws from"""
    seed: int = 0
    """seed of the `sample` draw"""
    metric: Literal["success", "return"] = "success"
    """success: the episode's success flag; return: the return mapped by return_range"""
    return_range: tuple[float, float] | None = None
    """(low, high): return low scores 0 and high scores 1 (metric=return)"""

    def score(self, episode_return: float, success: float) -> float:
        """The episode's performance in [0, 1]."""
        if self.metric == "success":
            return float(success)
        low, high = self.return_range  # type: ignore[misc]
        return float(min(1.0, max(0.0, (episode_return - low) / (high - low))))


@dataclass(frozen=True)
class Stage:
    """A set of tasks trained together for ``steps`` environment steps, scored on ``eval``."""

    name: str
    tasks: tuple[str, ...]
    steps: int
    eval: tuple[str, ...] = ()
    """the entries the stage is scored on (held-out tasks); empty: ``tasks``"""

    @property
    def eval_tasks(self) -> tuple[str, ...]:
        return self.eval or self.tasks


@dataclass(frozen=True)
class Curriculum:
    """A validated curriculum (see the module docstring); ``stages`` has ``repeat`` applied."""

    name: str
    description: str
    tasks: tuple[TaskEntry, ...]
    stages: tuple[Stage, ...]
    task_id_obs: bool = False
    source: str = "<dict>"

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def task(self, name: str) -> TaskEntry:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"curriculum {self.name!r} has no task {name!r}; tasks: {self.task_names}")

    def task_index(self, name: str) -> int:
        """The task's row in ``tasks`` (its one-hot position and trajectory task id)."""
        return self.task_names.index(self.task(name).name)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def with_stage_steps(self, steps: int) -> Curriculum:
        """The same curriculum with every stage lasting ``steps`` env steps."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise CurriculumError(f"stage steps must be a positive int, got {steps!r}")
        return dataclasses.replace(
            self, stages=tuple(dataclasses.replace(s, steps=steps) for s in self.stages)
        )

    def first_stages(self, n: int) -> Curriculum:
        """The curriculum cut to its first ``n`` stages (the task table is kept whole, so the
        task one-hot keeps its size)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self.stages):
            raise CurriculumError(f"n must be in [1, {len(self.stages)}], got {n!r}")
        return dataclasses.replace(self, stages=self.stages[:n])

    def only_stage(self, index: int) -> Curriculum:
        """A one-stage curriculum of stage ``index`` (task table kept whole): a single-task
        reference run."""
        if not 0 <= index < len(self.stages):
            raise CurriculumError(f"stage index must be in [0, {len(self.stages)}), got {index}")
        return dataclasses.replace(self, stages=(self.stages[index],))

    def build(self):
        """The families, task specs and spaces (:class:`curricula.envs.BuiltCurriculum`)."""
        from .envs import BuiltCurriculum

        return BuiltCurriculum(self)


# --- loading ----------------------------------------------------------------------------------


def _data_dir():
    return resources.files("curricula") / "data"


def available_curricula() -> list[str]:
    """Names of the curricula shipped in ``curricula/data``."""
    return sorted(
        p.name.rsplit(".", 1)[0] for p in _data_dir().iterdir() if p.name.endswith(".yaml")
    )


def load_curriculum(name_or_path: str | Path) -> Curriculum:
    """A shipped curriculum by name (see :func:`available_curricula`) or a YAML file by path."""
    text_path = str(name_or_path)
    path = Path(text_path)
    if text_path.endswith((".yaml", ".yml")) or path.is_file() or "/" in text_path:
        if not path.is_file():
            raise CurriculumError(f"curriculum file not found: {path}")
        source = str(path)
        text = path.read_text()
    else:
        entry = _data_dir() / f"{text_path}.yaml"
        if not entry.is_file():
            names = available_curricula()
            close = difflib.get_close_matches(text_path, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CurriculumError(
                f"unknown curriculum {text_path!r}.{hint} Shipped: {', '.join(names)}; "
                "or give a path to a YAML file"
            )
        source = f"curricula/data/{text_path}.yaml"
        text = entry.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CurriculumError(f"{source}: not valid YAML: {e}") from e
    return parse_curriculum(data, source)


def parse_curriculum(data: Any, source: str = "<dict>") -> Curriculum:
    """Validate a curriculum given as plain data (what the YAML file holds)."""

    def fail(where: str, message: str) -> CurriculumError:
        return CurriculumError(f"{source}: {where}: {message}")

    if not isinstance(data, Mapping):
        raise CurriculumError(
            f"{source}: a curriculum must be a mapping, got {type(data).__name__}"
        )
    _check_keys(data, _TOP_KEYS, "top level", fail)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise fail("name", "a non-empty string is required")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    task_id_obs = data.get("task_id_obs", False)
    if not isinstance(task_id_obs, bool):
        raise fail("task_id_obs", f"must be true or false, got {task_id_obs!r}")
    default_steps = data.get("steps_per_stage")
    if default_steps is not None:
        _positive_int(default_steps, "steps_per_stage", fail)
    repeat = data.get("repeat", 1)
    _positive_int(repeat, "repeat", fail)

    defaults = data.get("defaults", {}) or {}
    if not isinstance(defaults, Mapping):
        raise fail("defaults", "must be a mapping of task-entry keys")
    _check_keys(defaults, _TASK_KEYS, "defaults", fail)

    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, Mapping) or not raw_tasks:
        raise fail("tasks", "a non-empty mapping name -> task entry is required")
    tasks = []
    for tname, raw in raw_tasks.items():
        if not isinstance(tname, str) or not tname:
            raise fail("tasks", f"task names must be non-empty strings, got {tname!r}")
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise fail(f"tasks.{tname}", "must be a mapping")
        tasks.append(_parse_task(tname, {**defaults, **raw}, fail))

    raw_stages = data.get("stages")
    if not isinstance(raw_stages, Sequence) or isinstance(raw_stages, str) or not raw_stages:
        raise fail("stages", "a non-empty list of stages is required")
    known = {t.name for t in tasks}
    stages = []
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]"
        if not isinstance(raw, Mapping):
            raise fail(where, "must be a mapping with tasks (and name, steps)")
        _check_keys(raw, _STAGE_KEYS, where, fail)
        stage_tasks = raw.get("tasks")
        if isinstance(stage_tasks, str):
            stage_tasks = [stage_tasks]
        if not isinstance(stage_tasks, Sequence) or not stage_tasks:
            raise fail(f"{where}.tasks", "a non-empty list of task names is required")
        for t in stage_tasks:
            if t not in known:
                close = difflib.get_close_matches(str(t), sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise fail(f"{where}.tasks", f"unknown task {t!r}{hint} (tasks: {sorted(known)})")
        if len(set(stage_tasks)) != len(stage_tasks):
            raise fail(f"{where}.tasks", f"lists a task twice: {list(stage_tasks)}")
        eval_tasks = raw.get("eval", [])
        if isinstance(eval_tasks, str):
            eval_tasks = [eval_tasks]
        if not isinstance(eval_tasks, Sequence):
            raise fail(f"{where}.eval", "must be a list of task names")
        for t in eval_tasks:
            if t not in known:
                raise fail(f"{where}.eval", f"unknown task {t!r} (tasks: {sorted(known)})")
        steps = raw.get("steps", default_steps)
        if steps is None:
            raise fail(f"{where}.steps", "missing (and no steps_per_stage default)")
        _positive_int(steps, f"{where}.steps", fail)
        sname = raw.get("name", "+".join(stage_tasks))
        if not isinstance(sname, str) or not sname:
            raise fail(f"{where}.name", "must be a non-empty string")
        stages.append(Stage(sname, tuple(stage_tasks), int(steps), tuple(eval_tasks)))
    names = [s.name for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise fail("stages", f"stage names must be unique, repeated: {dup}")
    if repeat > 1:
        stages = [
            s if r == 0 else dataclasses.replace(s, name=f"{s.name}@{r + 1}")
            for r in range(repeat)
            for s in stages
        ]
    return Curriculum(
        name=name,
        description=description.strip(),
        tasks=tuple(tasks),
        stages=tuple(stages),
        task_id_obs=task_id_obs,
        source=source,
    )


def _parse_task(name: str, raw: Mapping, fail) -> TaskEntry:
    where = f"tasks.{name}"
    _check_keys(raw, _TASK_KEYS, where, fail)
    family = raw.get("family")
    if not isinstance(family, str) or not family:
        raise fail(f"{where}.family", "a task family spec is required (or set defaults.family)")
    kwargs = raw.get("family_kwargs", {}) or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise fail(f"{where}.family_kwargs", "must be a mapping of keyword arguments")
    params, sample = raw.get("params"), raw.get("sample")
    if (params is None) == (sample is None):
        raise fail(where, "give exactly one of `params` (one task) and `sample` (n tasks)")
    if params is not None and (not isinstance(params, Mapping) or not params):
        raise fail(f"{where}.params", "must be a non-empty mapping of task parameters")
    if sample is not None:
        _positive_int(sample, f"{where}.sample", fail)
    split = raw.get("split", "train")
    if split not in ("train", "test"):
        raise fail(f"{where}.split", f"must be 'train' or 'test', got {split!r}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail(f"{where}.seed", f"must be an int, got {seed!r}")
    metric = raw.get("metric", "success")
    if metric not in METRICS:
        raise fail(f"{where}.metric", f"must be one of {METRICS}, got {metric!r}")
    rr = raw.get("return_range")
    return_range = None
    if metric == "return":
        if (
            not isinstance(rr, Sequence)
            or isinstance(rr, str)
            or len(rr) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rr)
            or not all(math.isfinite(v) for v in rr)
            or not rr[1] > rr[0]
        ):
            raise fail(
                f"{where}.return_range",
                f"metric=return needs [low, high] with high > low, got {rr!r}",
            )
        return_range = (float(rr[0]), float(rr[1]))
    return TaskEntry(
        name=name,
        family=family,
        family_kwargs=_frozen(kwargs),
        params=None if params is None else _frozen(params),
        sample=None if sample is None else int(sample),
        split=split,
        seed=int(seed),
        metric=metric,
        return_range=return_range,
    )


def _frozen(mapping: Mapping) -> tuple[tuple[str, Any], ...]:
    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return tuple(sorted((str(k), plain(x)) for k, x in v.items()))
        if isinstance(v, list | tuple):
            return tuple(plain(x) for x in v)
        return v

    return tuple(sorted((str(k), plain(v)) for k, v in mapping.items()))


def _check_keys(raw: Mapping, allowed: Sequence[str], where: str, fail) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise fail(where, f"unknown key {key!r}{hint} (allowed: {', '.join(allowed)})")


def _positive_int(value: Any, where: str, fail) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(where, f"must be a positive int, got {value!r}")
