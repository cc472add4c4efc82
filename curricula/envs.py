"""From a curriculum to task specs and vector environments.

:class:`BuiltCurriculum` makes one :class:`metarl.tasks.TaskFamily` per distinct
``(family, family_kwargs)`` and the :class:`metarl.tasks.Task` specs of every entry that a stage
uses (the whole table still sizes the task one-hot), checks that
all tasks share one observation and one action space (a continual learner trains one policy), and
builds ``SAME_STEP``-autoreset vector envs for any list of ``(entry name, task)`` assignments.

With ``task_id_obs`` every observation gets a one-hot of its entry's row in the task table
appended (Continual World gives its single-head networks the task id the same way). Without it,
tasks that differ only in their reward (nav2d goals) look identical to a non-in-context policy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from metarl.tasks import Task, TaskFamily, make_family
from metarl.tasks.parametric import ParametricTaskFamily

from .curriculum import Curriculum, CurriculumError, TaskEntry

__all__ = ["BuiltCurriculum", "TaskIdObservation"]


class TaskIdObservation(gym.ObservationWrapper):
    """Appends a one-hot of length ``num_tasks`` with a 1 at ``index`` to a Box observation."""

    def __init__(self, env: gym.Env, index: int, num_tasks: int):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise CurriculumError(
                f"task_id_obs needs flat Box observations, got {space} ({env.unwrapped.task})"
            )
        if not 0 <= index < num_tasks:
            raise ValueError(f"index must be in [0, {num_tasks}), got {index}")
        self.one_hot = np.zeros(num_tasks, dtype=space.dtype)
        self.one_hot[index] = 1
        self.observation_space = with_task_id(space, num_tasks)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(observation, dtype=self.one_hot.dtype), self.one_hot])


def with_task_id(space: gym.spaces.Box, num_tasks: int) -> gym.spaces.Box:
    """``space`` with ``num_tasks`` extra dimensions in ``[0, 1]``."""
    low = np.concatenate([space.low, np.zeros(num_tasks, space.dtype)])
    high = np.concatenate([space.high, np.ones(num_tasks, space.dtype)])
    return gym.spaces.Box(low, high, dtype=space.dtype)


class BuiltCurriculum:
    """Families, task specs and spaces of a :class:`Curriculum`."""

    def __init__(self, curriculum: Curriculum):
        self.curriculum = curriculum
        self.families: dict[tuple, TaskFamily] = {}
        self.tasks: dict[str, list[Task]] = {}
        used = {name for stage in curriculum.stages for name in (*stage.tasks, *stage.eval)}
        for entry in curriculum.tasks:
            key = (entry.family, entry.family_kwargs)
            if key not in self.families:
                try:
                    self.families[key] = make_family(entry.family, **dict(entry.family_kwargs))
                except (TypeError, ValueError) as e:
                    raise CurriculumError(
                        f"{curriculum.source}: tasks.{entry.name}: cannot build family "
                        f"{entry.family!r} with {dict(entry.family_kwargs)}: {e}"
                    ) from e
            if entry.name in used:  # specs can be costly (a Meta-World benchmark per entry)
                self.tasks[entry.name] = self._specs(entry, self.families[key])
        spaces = {key: (f.observation_space, f.action_space) for key, f in self.families.items()}
        (obs0, act0), *rest = spaces.values()
        for key, (obs, act) in spaces.items():
            if obs != obs0 or act != act0:
                raise CurriculumError(
                    f"{curriculum.source}: every task must share one observation and action "
                    f"space; family {key[0]} has {obs} / {act}, the first {obs0} / {act0}"
                )
        self.family_observation_space, self.action_space = obs0, act0
        n = len(curriculum.tasks)
        if curriculum.task_id_obs:
            if not isinstance(obs0, gym.spaces.Box) or len(obs0.shape) != 1:
                raise CurriculumError(
                    f"{curriculum.source}: task_id_obs needs flat Box observations, got {obs0}"
                )
            self.observation_space = with_task_id(obs0, n)
        else:
            self.observation_space = obs0
        self.max_episode_steps = max(f.max_episode_steps for f in self.families.values())

    def _specs(self, entry: TaskEntry, family: TaskFamily) -> list[Task]:
        where = f"{self.curriculum.source}: tasks.{entry.name}"
        if entry.sample is not None:
            try:
                return family.sample(entry.sample, split=entry.split, seed=entry.seed)
            except ValueError as e:
                raise CurriculumError(f"{where}: {e}") from e
        params = {k: v for k, v in entry.params or ()}
        split = "train"
        if isinstance(family, ParametricTaskFamily):
            try:
                split = family.split_of(params) or "train"
            except (KeyError, TypeError, ValueError) as e:
                raise CurriculumError(
                    f"{where}.params: {params} do not fit {entry.family}: {e}"
                ) from e
        index = self.curriculum.task_index(entry.name)
        return [Task.create(family.name, split, index, params)]

    def family_of(self, name: str) -> TaskFamily:
        entry = self.curriculum.task(name)
        return self.families[(entry.family, entry.family_kwargs)]

    def assignments(self, names: Sequence[str], num_envs: int) -> list[tuple[str, Task]]:
        """``num_envs`` sub-env assignments covering the tasks of ``names``: entries take turns
        and each cycles through its own task specs, so every spec of every entry is used when
        ``num_envs`` allows."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        out = []
        for i in range(num_envs):
            name = names[i % len(names)]
            specs = self.tasks[name]
            out.append((name, specs[(i // len(names)) % len(specs)]))
        return out

    def make_env(self, name: str, task: Task, seed: int | None = None) -> gym.Env:
        """The time-limited env of ``task`` (a spec of entry ``name``), with its task one-hot."""
        env = self.family_of(name).make_env(task, seed=seed)
        if self.curriculum.task_id_obs:
            env = TaskIdObservation(
                env, self.curriculum.task_index(name), len(self.curriculum.tasks)
            )
        return env

    def vector_env(
        self,
        assignments: Sequence[tuple[str, Task]],
        seed: int | None = None,
        asynchronous: bool = False,
    ) -> gym.vector.VectorEnv:
        """A vector env (``SAME_STEP`` autoreset) whose sub-env ``i`` runs ``assignments[i]``,
        seeded ``seed + i``: in this process, or one subprocess per sub-env (``asynchronous``,
        gymnasium's ``AsyncVectorEnv``: worth it for slow envs on many cores)."""
        if not assignments:
            raise ValueError("vector_env needs at least one assignment")
        fns: list[Callable[[], gym.Env]] = [
            functools.partial(self.make_env, name, task, None if seed is None else seed + i)
            for i, (name, task) in enumerate(assignments)
        ]
        mode = gym.vector.AutoresetMode.SAME_STEP
        if asynchronous:
            return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)

    def task_ids(self, assignments: Sequence[tuple[str, Task]]) -> list[int]:
        """Each sub-env's entry row in the task table (the trajectories' ``task_ids``)."""
        return [self.curriculum.task_index(name) for name, _ in assignments]
