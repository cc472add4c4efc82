"""Meta-World v3 benchmarks (ML1, ML10, ML45, MT10) as task families (Yu et al., 2019).

A task is ``(env_name, index)``: ``index`` points into the benchmark's own ``train_tasks`` or
``test_tasks`` list (50 goal/object configurations per environment), so train/test are exactly
Meta-World's split: ML1 uses different goals of one environment, ML10/ML45 held-out environments.
MT10 defines no test split (``sample(split="test")`` raises). Rewards, ``info["success"]`` and the
39-dim observation are Meta-World's; episodes last 500 steps (its ``max_path_length``).

The benchmark object is built once per family (seeded by ``benchmark_seed``, which tasks record),
on first use: ML45 takes tens of seconds. Needs the ``metaworld`` extra.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks.base import Task, TaskFamily, draw_from_pool
from metarl.tasks.extras import require

BENCHMARKS = ("ml1", "ml10", "ml45", "mt10")
MAX_PATH_LENGTH = 500
OBS_DIM, ACT_DIM = 39, 4


class MetaWorldTaskEnv(gym.Wrapper):
    """A Meta-World env set to one task, with the family's common observation space.

    Meta-World ignores ``reset(seed=...)``; the seed goes to its ``seed()`` method instead.
    """

    def __init__(self, env: gym.Env, observation_space: gym.spaces.Box) -> None:
        super().__init__(env)
        self.observation_space = observation_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.env.unwrapped.seed(seed)
        return self.env.reset(options=options)


class MetaWorldFamily(TaskFamily):
    """One Meta-World benchmark; ``env_name`` (e.g. ``"reach-v3"``) is required for ML1."""

    def __init__(
        self,
        benchmark: str,
        env_name: str | None = None,
        benchmark_seed: int = 0,
        max_episode_steps: int = MAX_PATH_LENGTH,
    ) -> None:
        if not isinstance(max_episode_steps, int) or not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
            raise ValueError(
                f"max_episode_steps must be an int in [1, {MAX_PATH_LENGTH}], got "
                f"{max_episode_steps!r}"
            )
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
        self.name = f"metaworld-{benchmark}" + (f":{env_name}" if benchmark == "ml1" else "")
        self._metaworld = require("metaworld", "metaworld", self.name)
        if benchmark == "ml1":
            names = list(self._metaworld.ML1.ENV_NAMES)
            if env_name not in names:
                raise ValueError(f"unknown Meta-World environment {env_name!r}; one of {names}")
        elif env_name is not None:
            raise ValueError(f"{benchmark} takes no env_name (got {env_name!r})")
        self.benchmark = benchmark
        self.env_name = env_name
        self.benchmark_seed = benchmark_seed
        self.max_episode_steps = max_episode_steps

    @property
    def observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)

    @property
    def action_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    @functools.cached_property
    def _benchmark(self) -> Any:
        cls = getattr(self._metaworld, self.benchmark.upper())
        if self.benchmark == "ml1":
            return cls(self.env_name, seed=self.benchmark_seed)
        return cls(seed=self.benchmark_seed)

    def _pool(self, split: str) -> list[Any]:
        if split == "test" and self.benchmark == "mt10":
            raise ValueError("MT10 defines no test split: it evaluates on its train tasks")
        bench = self._benchmark
        return bench.train_tasks if split == "train" else bench.test_tasks

    def _sample(self, n: int, split: str, rng: np.random.Generator) -> list[Task]:
        pool = self._pool(split)
        return [
            Task.create(
                self.name,
                split,
                i,
                {"env_name": pool[i].env_name, "benchmark_seed": self.benchmark_seed},
            )
            for i in draw_from_pool(len(pool), n, rng)
        ]

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if task.param("benchmark_seed") != self.benchmark_seed:
            raise ValueError(
                f"task {task} comes from benchmark_seed {task.param('benchmark_seed')}, "
                f"this family uses {self.benchmark_seed}"
            )

    def _make_task_env(self, task: Task) -> gym.Env:
        pool = self._pool(task.split)
        if not 0 <= task.index < len(pool) or pool[task.index].env_name != task.param("env_name"):
            raise ValueError(f"task {task} is not in {self.name}'s {task.split} tasks")
        bench = self._benchmark
        classes = {**dict(bench.train_classes), **dict(bench.test_classes or {})}
        env = classes[task.param("env_name")]()
        env.set_task(pool[task.index])
        env.task = task
        return MetaWorldTaskEnv(env, self.observation_space)
