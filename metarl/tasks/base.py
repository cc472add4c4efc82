"""The task-family interface: small hashable task specs and the environments they build.

A :class:`Task` is data (a family name, a split, an index and a few parameters), so it can be
hashed, logged to JSON and sent to worker processes. A :class:`TaskFamily` samples tasks and turns
them into gymnasium environments; every task of one family shares its observation and action
spaces, so a batch of tasks becomes one vector environment.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

SPLITS = ("train", "test")


def _to_plain(value: Any) -> Any:
    """Numpy scalars and arrays -> Python floats/ints/bools and tuples (hashable, JSON-exact)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_to_plain(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"task parameters must be numbers, strings or sequences, got {type(value)}")


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Task:
    """One task of a family: what an environment needs to become that task, and nothing else.

    ``index`` identifies the task within its split: the draw's position in a seeded stream for
    parametric families, the benchmark's task index for Meta-World, the first level for Procgen.
    ``params`` are ``(name, value)`` pairs sorted by name, with values Python scalars, strings or
    tuples of them, so that tasks hash and compare by value and survive a JSON round trip.
    """

    family: str
    split: str
    index: int
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def create(cls, family: str, split: str, index: int, params: Mapping[str, Any]) -> Task:
        """A task with its parameters normalised (sorted, numpy values made plain)."""
        plain = tuple(sorted((str(k), _to_plain(v)) for k, v in params.items()))
        return cls(family=family, split=split, index=int(index), params=plain)

    def param(self, name: str) -> Any:
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(
            f"task {self} has no parameter {name!r}; it has {[k for k, _ in self.params]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists); :meth:`from_dict` inverts it exactly."""
        return {
            "family": self.family,
            "split": self.split,
            "index": self.index,
            "params": {k: _to_json(v) for k, v in self.params},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        return cls.create(d["family"], d["split"], d["index"], d["params"])

    def __str__(self) -> str:
        def short(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.3g}"
            if isinstance(v, tuple):
                return "(" + ",".join(short(x) for x in v) + ")"
            return str(v)

        inner = ", ".join(f"{k}={short(v)}" for k, v in self.params)
        return f"{self.family}/{self.split}#{self.index}({inner})"


class SeededReset(gym.Wrapper):
    """Passes ``seed`` to the first ``reset()`` called without one: a built env is reproducible."""

    def __init__(self, env: gym.Env, seed: int | None) -> None:
        super().__init__(env)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


class TaskFamily(abc.ABC):
    """A distribution over tasks with shared spaces, and the environments for its tasks.

    Subclasses set ``name`` and ``max_episode_steps``, define the two spaces, and implement
    :meth:`_sample` and :meth:`_make_task_env`; validation, time limits, seeding and
    vectorisation live here once.
    """

    name: str
    max_episode_steps: int
    reports_success: bool = True
    """whether the envs set ``info["success"]`` (False: success columns are meaningless)"""

    @property
    @abc.abstractmethod
    def observation_space(self) -> gym.Space: ...

    @property
    @abc.abstractmethod
    def action_space(self) -> gym.Space: ...

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[Task]:
        """``n`` tasks of ``split``; the same ``(n, split, seed)`` always gives the same list."""
        check_split(split)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        return self._sample(int(n), split, np.random.default_rng(seed))

    @abc.abstractmethod
    def _sample(self, n: int, split: str, rng: np.random.Generator) -> list[Task]: ...

    @abc.abstractmethod
    def _make_task_env(self, task: Task) -> gym.Env:
        """The un-time-limited env for ``task``; its ``unwrapped.task`` must be ``task``."""

    def check_task(self, task: Task) -> None:
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, got {type(task).__name__}")
        if task.family != self.name:
            raise ValueError(f"task {task} belongs to family {task.family!r}, not {self.name!r}")
        check_split(task.split)

    def make_env(self, task: Task, seed: int | None = None) -> gym.Env:
        """A ``TimeLimit``-wrapped env for ``task``; ``seed`` seeds its first reset and actions."""
        self.check_task(task)
        env = SeededReset(self._make_task_env(task), seed)
        return gym.wrappers.TimeLimit(env, max_episode_steps=self.max_episode_steps)

    def _make_batched_env(
        self, tasks: list[Task], seeds: list[int | None]
    ) -> gym.vector.VectorEnv | None:
        """A natively batched vector env (:mod:`metarl.tasks.batched`) whose sub-env ``j`` runs
        ``tasks[j]`` seeded ``seeds[j]``, equal to the ``SyncVectorEnv`` of :meth:`make_env`; or
        ``None`` where the family has none."""
        return None

    def _env_customised(self) -> bool:
        """Whether a subclass overrides ``make_env`` or ``_make_task_env`` below the class that
        provides the batched env (e.g. to wrap each env), which the batched env cannot honour."""
        cls = type(self)
        owner = next((c for c in cls.__mro__ if "_make_batched_env" in vars(c)), TaskFamily)
        return any(
            getattr(cls, name) is not getattr(owner, name)
            for name in ("_make_task_env", "make_env")
        )

    def make_vector_env(
        self,
        tasks: list[Task],
        envs_per_task: int = 1,
        asynchronous: bool = False,
        seed: int | None = None,
        batched: bool | None = None,
    ) -> gym.vector.VectorEnv:
        """Sub-env ``i * envs_per_task + k`` runs ``tasks[i]`` (seeded ``seed + that index``).

        Autoreset is ``SAME_STEP``: when a sub-env's episode ends, the returned observation is
        already the next episode's first, and the last one is in ``info["final_obs"]`` (masked by
        ``info["_final_obs"]``), so truncated episodes can be bootstrapped.

        ``batched``: one numpy step for all sub-envs (the family's batched env; the default where
        it has one, ``asynchronous`` is off and no subclass changed ``make_env`` or
        ``_make_task_env``), or gymnasium's ``SyncVectorEnv`` /
        ``AsyncVectorEnv`` over one env per sub-env (``False``). Both give the same observations,
        rewards, ends, infos and random draws.
        """
        if not tasks:
            raise ValueError("make_vector_env needs at least one task")
        if envs_per_task < 1:
            raise ValueError(f"envs_per_task must be >= 1, got {envs_per_task}")
        for task in tasks:
            self.check_task(task)
        sub_tasks = [task for task in tasks for _ in range(envs_per_task)]
        seeds = [None if seed is None else seed + j for j in range(len(sub_tasks))]
        if batched is None and self._env_customised():
            batched = False  # a subclass changed the per-task env: the batched one would skip it
        if batched is None or batched:
            if batched and asynchronous:
                raise ValueError("batched=True steps in this process; pass asynchronous=False")
            env = None if asynchronous else self._make_batched_env(sub_tasks, seeds)
            if env is not None:
                return env
            if batched:
                raise ValueError(f"family {self.name!r} has no batched env; pass batched=False")
        fns: list[Callable[[], gym.Env]] = [
            functools.partial(self.make_env, task, s) for task, s in zip(sub_tasks, seeds)
        ]
        mode = gym.vector.AutoresetMode.SAME_STEP
        if asynchronous:
            return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def checkerboard_split(unit_point: np.ndarray, cells_per_axis: int) -> str:
    """``"train"`` or ``"test"`` by the colour of the checkerboard cell holding ``unit_point``.

    Coordinates are in ``[0, 1]``; the cube is cut into ``cells_per_axis`` cells per axis and a
    cell is a train cell when the sum of its integer coordinates is even. Train and test regions
    are disjoint and interleaved, so both cover the whole parameter range at coarse scale.
    """
    cells = np.minimum(
        (np.asarray(unit_point) * cells_per_axis).astype(np.int64), cells_per_axis - 1
    )
    return "train" if int(cells.sum()) % 2 == 0 else "test"


def draw_from_pool(pool_size: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices into a pool: shuffled passes over it, so no repeats until it is exhausted."""
    out: list[int] = []
    while len(out) < n:
        out.extend(int(i) for i in rng.permutation(pool_size)[: n - len(out)])
    return out
