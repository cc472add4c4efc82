"""CartPole-v1 with a per-task pole length and gravity.

Task: ``length ~ U(0.25, 1.0)`` (gymnasium's ``length``, i.e. half the pole's length; 0.5 is
standard) and ``gravity ~ U(7.8, 11.8)``. Dynamics, observation, actions and the +1 per step
reward are CartPole-v1's. Episodes last at most 500 steps; ``info["success"]`` is true on the step
that reaches the limit with the pole still up (and false on every other step).

Split: a 4 x 4 checkerboard over the normalised ``(length, gravity)`` rectangle; train tasks lie
in cells whose integer coordinates sum to an even number, test tasks in the others.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from metarl.tasks.base import Task, checkerboard_split
from metarl.tasks.parametric import ParametricTaskFamily

LENGTH_RANGE = (0.25, 1.0)
GRAVITY_RANGE = (7.8, 11.8)
_SPLIT_CELLS = 4


class ParametricCartPoleEnv(CartPoleEnv):
    """CartPole with the task's pole (half-)length and gravity, reporting success at the limit."""

    def __init__(self, task: Task, max_episode_steps: int) -> None:
        super().__init__()
        self.task = task
        self.length = float(task.param("length"))
        self.gravity = float(task.param("gravity"))
        self.polemass_length = self.masspole * self.length
        self._max_episode_steps = max_episode_steps
        self._elapsed = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._elapsed = 0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        self._elapsed += 1
        info["success"] = bool(not terminated and self._elapsed >= self._max_episode_steps)
        return obs, reward, terminated, truncated, info


class CartPoleFamily(ParametricTaskFamily):
    """CartPole tasks over pole length and gravity, 500-step episodes."""

    def __init__(self, max_episode_steps: int = 500) -> None:
        self.name = "cartpole"
        self.max_episode_steps = max_episode_steps
        self._spaces = CartPoleEnv()

    @property
    def observation_space(self) -> gym.spaces.Box:
        return self._spaces.observation_space

    @property
    def action_space(self) -> gym.spaces.Discrete:
        return self._spaces.action_space

    def draw_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"length": rng.uniform(*LENGTH_RANGE), "gravity": rng.uniform(*GRAVITY_RANGE)}

    def split_of(self, params: dict[str, Any]) -> str:
        unit = np.array(
            [
                (params["length"] - LENGTH_RANGE[0]) / (LENGTH_RANGE[1] - LENGTH_RANGE[0]),
                (params["gravity"] - GRAVITY_RANGE[0]) / (GRAVITY_RANGE[1] - GRAVITY_RANGE[0]),
            ]
        )
        return checkerboard_split(unit, _SPLIT_CELLS)

    def _make_task_env(self, task: Task) -> gym.Env:
        return ParametricCartPoleEnv(task, self.max_episode_steps)
