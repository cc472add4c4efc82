"""2D point navigation, the MAML-RL setting (Finn et al., 2017).

Task: a goal ``g ~ U([-0.5, 0.5]^2)``. The agent starts at the origin; the observation is its
position ``x`` (2,). An action ``a`` is clipped to ``[-0.1, 0.1]^2`` and moves it: ``x' = x + a``.
Reward: ``-||x' - g||_2`` (distance after the move). ``info["success"]`` is ``||x' - g|| < 0.05``.
Episodes last 100 steps (truncation only).

Split: a 10 x 10 checkerboard over the goal square; train goals lie in cells whose integer
coordinates sum to an even number, test goals in the others.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks.base import Task, checkerboard_split
from metarl.tasks.batched import BatchedTaskEnv
from metarl.tasks.parametric import ParametricTaskFamily

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_STEP = 0.1
SUCCESS_RADIUS = 0.05
_SPLIT_CELLS = 10


class PointNavEnv(gym.Env):
    """A point that moves by its (clipped) action towards a fixed goal."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-MAX_STEP, MAX_STEP, (2,), np.float32)

    def __init__(self, task: Task) -> None:
        self.task = task
        self.goal = np.asarray(task.param("goal"), dtype=np.float64)
        self.pos = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        return self.pos.astype(np.float32), {}

    def step(self, action: Any):
        step = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -MAX_STEP, MAX_STEP)
        self.pos = self.pos + step
        dist = float(np.linalg.norm(self.pos - self.goal))
        info = {"distance": dist, "success": dist < SUCCESS_RADIUS}
        return self.pos.astype(np.float32), -dist, False, False, info


class BatchedPointNavEnv(BatchedTaskEnv):
    """:class:`PointNavEnv` for every sub-env at once: positions ``(B, 2)``, goals ``(B, 2)``."""

    def __init__(self, tasks: list[Task], seeds: list[int | None], max_episode_steps: int):
        super().__init__(
            tasks,
            seeds,
            max_episode_steps,
            PointNavEnv.observation_space,
            PointNavEnv.action_space,
        )
        self.goal = np.array([t.param("goal") for t in tasks], dtype=np.float64)  # (B, 2)
        self.pos = np.zeros((self.num_envs, 2))

    def _reset_rows(self, rows: np.ndarray, options: dict[str, Any] | None) -> None:
        self.pos[rows] = 0.0

    def _advance(self, actions: Any):
        a = np.asarray(actions, dtype=np.float64)
        if a.size != 2 * self.num_envs:
            raise ValueError(f"expected actions of shape ({self.num_envs}, 2), got {a.shape}")
        self.pos = self.pos + np.clip(a.reshape(self.num_envs, 2), -MAX_STEP, MAX_STEP)
        dist = np.linalg.norm(self.pos - self.goal, axis=1)  # (B,), as the per-row norm
        info = {"distance": dist, "success": dist < SUCCESS_RADIUS}
        return -dist, np.zeros(self.num_envs, bool), info

    def _observe(self) -> np.ndarray:
        return self.pos.astype(np.float32)

    def _sub_env_attrs(self) -> dict[str, Any]:
        return {"goal": list(self.goal.copy()), "pos": list(self.pos.copy())}


class Nav2DFamily(ParametricTaskFamily):
    """Goals in ``[-0.5, 0.5]^2`` (or the region ``[goal_low, goal_high]`` inside it: a task
    distribution of a continual sequence, with the same train/test checkerboard, so train and test
    goals of a region are disjoint), 100-step episodes."""

    def __init__(
        self,
        max_episode_steps: int = 100,
        goal_low: tuple[float, float] | list[float] = (GOAL_LOW, GOAL_LOW),
        goal_high: tuple[float, float] | list[float] = (GOAL_HIGH, GOAL_HIGH),
    ) -> None:
        low, high = np.asarray(goal_low, np.float64), np.asarray(goal_high, np.float64)
        if (
            low.shape != (2,)
            or high.shape != (2,)
            or not np.all(np.isfinite(low) & np.isfinite(high))
            or np.any(low < GOAL_LOW)
            or np.any(high > GOAL_HIGH)
            or np.any(high - low < 0.1)
        ):
            raise ValueError(
                f"goal_low and goal_high must be two [x, y] corners inside [{GOAL_LOW}, "
                f"{GOAL_HIGH}]^2, at least 0.1 apart per axis; got {goal_low}, {goal_high}"
            )
        self.name = "nav2d"
        self.max_episode_steps = max_episode_steps
        self.goal_low, self.goal_high = low, high

    @property
    def observation_space(self) -> gym.spaces.Box:
        return PointNavEnv.observation_space

    @property
    def action_space(self) -> gym.spaces.Box:
        return PointNavEnv.action_space

    def draw_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"goal": rng.uniform(self.goal_low, self.goal_high)}

    def split_of(self, params: dict[str, Any]) -> str:
        unit = (np.asarray(params["goal"]) - GOAL_LOW) / (GOAL_HIGH - GOAL_LOW)
        return checkerboard_split(unit, _SPLIT_CELLS)

    def _make_task_env(self, task: Task) -> gym.Env:
        return PointNavEnv(task)

    def _make_batched_env(self, tasks: list[Task], seeds: list[int | None]) -> BatchedPointNavEnv:
        return BatchedPointNavEnv(tasks, seeds, self.max_episode_steps)
