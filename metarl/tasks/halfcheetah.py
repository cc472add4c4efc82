"""HalfCheetah velocity and direction tasks, the MAML-RL locomotion setting (Finn et al., 2017).

Both use gymnasium's MuJoCo ``HalfCheetah-v5`` dynamics and observation (17,), actions in
``[-1, 1]^6``, and 200-step episodes; only the reward changes (``v`` = forward velocity):

- ``halfcheetah-vel``: target ``v* ~ U(0, 2)``, reward ``-|v - v*| - 0.05 ||a||^2``. Split: the
  target range is cut into 20 intervals of width 0.1, alternately train and test.
- ``halfcheetah-dir``: direction ``d in {-1, +1}``, reward ``d v - 0.05 ||a||^2``. The benchmark
  has only these two tasks, so there is no split: both splits draw from ``{-1, +1}``.

Needs the ``mujoco`` extra (imported when a family is built).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks.base import Task, checkerboard_split
from metarl.tasks.extras import require
from metarl.tasks.parametric import ParametricTaskFamily

VELOCITY_RANGE = (0.0, 2.0)
_SPLIT_CELLS = 20
OBS_DIM, ACT_DIM = 17, 6


class _HalfCheetahFamily(ParametricTaskFamily):
    reports_success = False

    def __init__(self, max_episode_steps: int = 200) -> None:
        require("mujoco", "mujoco", self.name)
        self.max_episode_steps = max_episode_steps

    @property
    def observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)

    @property
    def action_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    def _make_task_env(self, task: Task) -> gym.Env:
        from metarl.tasks.halfcheetah_env import TaskHalfCheetahEnv

        return TaskHalfCheetahEnv(task)


class HalfCheetahVelFamily(_HalfCheetahFamily):
    """Run at a target forward velocity in ``[0, 2]`` (or in ``[velocity_low, velocity_high]``
    inside it: a task distribution of a continual sequence; the split is the same 20 intervals,
    so a range's train and test targets are disjoint)."""

    name = "halfcheetah-vel"

    def __init__(
        self,
        max_episode_steps: int = 200,
        velocity_low: float = VELOCITY_RANGE[0],
        velocity_high: float = VELOCITY_RANGE[1],
    ) -> None:
        lo, hi = float(velocity_low), float(velocity_high)
        if not VELOCITY_RANGE[0] <= lo < hi <= VELOCITY_RANGE[1] or hi - lo < 0.2:
            raise ValueError(
                f"velocity_low < velocity_high must lie in {list(VELOCITY_RANGE)}, at least 0.2 "
                f"apart; got {velocity_low}, {velocity_high}"
            )
        super().__init__(max_episode_steps)
        self.velocity_low, self.velocity_high = lo, hi

    def draw_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"target_velocity": rng.uniform(self.velocity_low, self.velocity_high)}

    def split_of(self, params: dict[str, Any]) -> str:
        lo, hi = VELOCITY_RANGE
        return checkerboard_split(
            np.array([(params["target_velocity"] - lo) / (hi - lo)]), _SPLIT_CELLS
        )


class HalfCheetahDirFamily(_HalfCheetahFamily):
    """Run forwards (+1) or backwards (-1) as fast as possible."""

    name = "halfcheetah-dir"

    def draw_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"direction": int(rng.choice([-1, 1]))}

    def split_of(self, params: dict[str, Any]) -> None:
        return None
