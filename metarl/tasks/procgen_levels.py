"""Procgen games with levels as tasks (Cobbe et al., 2020).

A task is a block of ``levels_per_task`` consecutive levels ``[start_level, start_level + n)``
of one game and distribution mode. Train tasks tile levels ``[0, num_train_levels)``; test tasks
tile ``[test_start_level, test_start_level + num_test_levels)`` (default from 10,000), so the two
never share a level. Sampling shuffles the split's blocks and cycles through them.

The gym3 env is wrapped as a gymnasium env: observation ``Box(0, 255, (64, 64, 3), uint8)``,
action ``Discrete(15)``, Procgen's rewards, episodes capped at ``max_episode_steps`` (Procgen's
own games end earlier). ``info["success"]`` is Procgen's ``prev_level_complete`` on the
terminating step. Procgen resets itself when an episode ends, so the observation returned with
``terminated=True`` is already the next episode's first (gym3 exposes no terminal frame).
Needs the ``procgen`` extra (the ``procgen-mirror`` distribution).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks.base import Task, TaskFamily, draw_from_pool
from metarl.tasks.extras import require

GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)  # fmt: skip
DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory", "exploration")
OBS_SHAPE = (64, 64, 3)
NUM_ACTIONS = 15


class ProcgenLevelEnv(gym.Env):
    """One Procgen game restricted to the task's levels, as a single gymnasium env."""

    observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
    action_space = gym.spaces.Discrete(NUM_ACTIONS)

    def __init__(self, task: Task, gym3_env_cls: type) -> None:
        self.task = task
        self._gym3_env_cls = gym3_env_cls
        self._env: Any = None
        self._obs = np.zeros(OBS_SHAPE, np.uint8)
        self._at_episode_start = False

    def _restart(self) -> None:
        # A new gym3 env is the only way to restart an episode mid-way or to reseed it.
        if self._env is not None:
            self._env.close()
        self._env = self._gym3_env_cls(
            num=1,
            env_name=self.task.param("game"),
            num_levels=self.task.param("num_levels"),
            start_level=self.task.param("start_level"),
            distribution_mode=self.task.param("distribution_mode"),
            rand_seed=int(self.np_random.integers(2**31 - 1)),
        )
        self._obs = self._env.observe()[1]["rgb"][0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or self._env is None or not self._at_episode_start:
            self._restart()
        self._at_episode_start = False
        return self._obs.copy(), {}

    def step(self, action: Any):
        self._env.act(np.array([int(action)], dtype=np.int32))
        reward, ob, first = self._env.observe()
        info = dict(self._env.get_info()[0])
        terminated = bool(first[0])
        self._at_episode_start = terminated
        self._obs = ob["rgb"][0]
        out_info = {"level_seed": int(info["level_seed"])}
        if terminated:
            out_info["success"] = bool(info["prev_level_complete"])
        return self._obs.copy(), float(reward[0]), terminated, False, out_info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class ProcgenFamily(TaskFamily):
    """Levels of one Procgen game as tasks."""

    def __init__(
        self,
        game: str,
        distribution_mode: str = "easy",
        levels_per_task: int = 1,
        num_train_levels: int = 200,
        test_start_level: int = 10_000,
        num_test_levels: int = 1_000,
        max_episode_steps: int = 1_000,
    ) -> None:
        self.name = f"procgen:{game}"
        if game not in GAMES:
            raise ValueError(f"unknown Procgen game {game!r}; one of {GAMES}")
        if distribution_mode not in DISTRIBUTION_MODES:
            raise ValueError(f"distribution_mode must be one of {DISTRIBUTION_MODES}")
        if levels_per_task < 1 or num_train_levels < levels_per_task:
            raise ValueError("need 1 <= levels_per_task <= num_train_levels")
        if num_test_levels < levels_per_task or test_start_level < num_train_levels:
            raise ValueError("test levels must start after the train levels and hold one task")
        self._procgen = require("procgen", "procgen", self.name)
        self.game = game
        self.distribution_mode = distribution_mode
        self.levels_per_task = levels_per_task
        self._first_level = {"train": 0, "test": test_start_level}
        self._num_tasks = {
            "train": num_train_levels // levels_per_task,
            "test": num_test_levels // levels_per_task,
        }
        self.max_episode_steps = max_episode_steps

    @property
    def observation_space(self) -> gym.spaces.Box:
        return ProcgenLevelEnv.observation_space

    @property
    def action_space(self) -> gym.spaces.Discrete:
        return ProcgenLevelEnv.action_space

    def _sample(self, n: int, split: str, rng: np.random.Generator) -> list[Task]:
        tasks = []
        for block in draw_from_pool(self._num_tasks[split], n, rng):
            start = self._first_level[split] + block * self.levels_per_task
            params = {
                "game": self.game,
                "start_level": start,
                "num_levels": self.levels_per_task,
                "distribution_mode": self.distribution_mode,
            }
            tasks.append(Task.create(self.name, split, start, params))
        return tasks

    def _make_task_env(self, task: Task) -> gym.Env:
        return ProcgenLevelEnv(task, self._procgen.ProcgenGym3Env)
