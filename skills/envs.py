"""Environments for skill discovery (training side: gymnasium).

- :class:`PointEnv`: nav2d's point dynamics (``x' = x + clip(a, ±0.1)``) with no goal and no
  reward, in the arena ``[-1, 1]^2``; the DIAYN testbed.
- :class:`GridMaze`: a sparse-reward maze (reward 1 at the goal, else 0) that counts the cells
  it has visited, for curiosity experiments.

Both build ``SAME_STEP`` vector environments, as the rollout engine requires.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks.nav2d import MAX_STEP

ARENA = 1.0


class PointEnv(gym.Env):
    """A point in ``[-ARENA, ARENA]^2`` that starts at the origin and moves by its clipped action
    (nav2d's dynamics, :mod:`metarl.tasks.nav2d`); the reward is always 0."""

    observation_space = gym.spaces.Box(-ARENA, ARENA, (2,), np.float32)
    action_space = gym.spaces.Box(-MAX_STEP, MAX_STEP, (2,), np.float32)

    def __init__(self) -> None:
        self.pos = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        return self.pos.astype(np.float32), {}

    def step(self, action: Any):
        step = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -MAX_STEP, MAX_STEP)
        self.pos = np.clip(self.pos + step, -ARENA, ARENA)
        return self.pos.astype(np.float32), 0.0, False, False, {}


def make_point_vec_env(
    num_envs: int, max_episode_steps: int = 50, seed: int | None = None
) -> gym.vector.VectorEnv:
    def make() -> gym.Env:
        return gym.wrappers.TimeLimit(PointEnv(), max_episode_steps=max_episode_steps)

    envs = gym.vector.SyncVectorEnv(
        [make for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    if seed is not None:
        envs.action_space.seed(seed)
    return envs


def maze_layout(cells: int = 8, seed: int = 0) -> np.ndarray:
    """A perfect maze (one path between any two cells) on a ``cells x cells`` grid, carved by a
    seeded depth-first search; returns a ``(2 cells + 1)^2`` bool array, True for walls."""
    rng = np.random.default_rng(seed)
    size = 2 * cells + 1
    walls = np.ones((size, size), dtype=bool)
    stack = [(0, 0)]
    seen = {(0, 0)}
    walls[1, 1] = False
    while stack:
        r, c = stack[-1]
        nbrs = [
            (r + dr, c + dc)
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= r + dr < cells and 0 <= c + dc < cells and (r + dr, c + dc) not in seen
        ]
        if not nbrs:
            stack.pop()
            continue
        nr, nc = nbrs[rng.integers(len(nbrs))]
        walls[2 * nr + 1, 2 * nc + 1] = False
        walls[r + nr + 1, c + nc + 1] = False  # the wall between the two cells
        seen.add((nr, nc))
        stack.append((nr, nc))
    return walls


class GridMaze(gym.Env):
    """A grid maze with four moves; the agent starts in the top-left cell and gets reward 1
    (ending the episode) in the bottom-right one. Observations are the position scaled to
    ``[0, 1]^2``. ``visits`` counts, over the env's whole life, the steps spent in each cell."""

    action_space = gym.spaces.Discrete(4)
    _MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])

    def __init__(self, cells: int = 8, layout_seed: int = 0) -> None:
        self.walls = maze_layout(cells, layout_seed)
        self.size = self.walls.shape[0]
        self.start = np.array([1, 1])
        self.goal = np.array([self.size - 2, self.size - 2])
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.visits = np.zeros(self.walls.shape, dtype=np.int64)
        self.pos = self.start.copy()

    def _obs(self) -> np.ndarray:
        return (self.pos / (self.size - 1)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = self.start.copy()
        self.visits[tuple(self.pos)] += 1
        return self._obs(), {}

    def step(self, action: Any):
        nxt = self.pos + self._MOVES[int(action)]
        if not self.walls[tuple(nxt)]:
            self.pos = nxt
        self.visits[tuple(self.pos)] += 1
        at_goal = bool(np.array_equal(self.pos, self.goal))
        return self._obs(), float(at_goal), at_goal, False, {"success": at_goal}

    @property
    def free_cells(self) -> int:
        return int((~self.walls).sum())


def make_maze_vec_env(
    num_envs: int, cells: int = 8, max_episode_steps: int = 200, layout_seed: int = 0
) -> gym.vector.SyncVectorEnv:
    def make() -> gym.Env:
        return gym.wrappers.TimeLimit(GridMaze(cells, layout_seed), max_episode_steps)

    return gym.vector.SyncVectorEnv(
        [make for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def maze_coverage(envs: gym.vector.SyncVectorEnv) -> tuple[int, int]:
    """``(distinct cells visited by any sub-env, free cells)``."""
    mazes = [e.unwrapped for e in envs.envs]
    visited = np.logical_or.reduce([m.visits > 0 for m in mazes])
    return int(visited.sum()), mazes[0].free_cells
