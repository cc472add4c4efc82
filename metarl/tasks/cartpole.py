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
from gymnasium.envs.classic_control import utils
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from metarl.tasks.base import Task, checkerboard_split
from metarl.tasks.batched import BatchedTaskEnv
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


class BatchedCartPoleEnv(BatchedTaskEnv):
    """:class:`ParametricCartPoleEnv` for every sub-env at once: states ``(B, 4)``, per-env pole
    length and gravity ``(B,)``.

    The step is gymnasium's CartPole Euler step (Barto, Sutton and Anderson, 1983), elementwise
    with the operations in CartPoleEnv's order, so every row equals the per-env step bit for bit::

        temp = (F + m_p l θ̇² sin θ) / (m_c + m_p)
        θ̈ = (g sin θ - cos θ · temp) / (l (4/3 - m_p cos² θ / (m_c + m_p)))
        ẍ = temp - m_p l θ̈ cos θ / (m_c + m_p)
        (x, ẋ, θ, θ̇) += τ (ẋ, ẍ, θ̇, θ̈)

    A reset draws the 4 initial values from the sub-env's own generator, as CartPoleEnv does.
    """

    def __init__(self, tasks: list[Task], seeds: list[int | None], max_episode_steps: int):
        ref = CartPoleEnv()  # the constants and spaces
        super().__init__(tasks, seeds, max_episode_steps, ref.observation_space, ref.action_space)
        self.length = np.array([float(t.param("length")) for t in tasks])  # (B,)
        self.gravity = np.array([float(t.param("gravity")) for t in tasks])  # (B,)
        self.masspole, self.total_mass = ref.masspole, ref.total_mass
        self.polemass_length = self.masspole * self.length  # (B,)
        self.force_mag, self.tau = ref.force_mag, ref.tau
        self.x_threshold, self.theta_threshold = ref.x_threshold, ref.theta_threshold_radians
        # the state (x, ẋ, θ, θ̇) as four contiguous (B,) arrays
        self.x, self.x_dot, self.theta, self.theta_dot = np.zeros((4, self.num_envs))

    def _reset_rows(self, rows: np.ndarray, options: dict[str, Any] | None) -> None:
        low, high = utils.maybe_parse_reset_bounds(options, -0.05, 0.05)
        fresh = np.stack([self._rng(int(i)).uniform(low=low, high=high, size=(4,)) for i in rows])
        for column, values in zip((self.x, self.x_dot, self.theta, self.theta_dot), fresh.T):
            column[rows] = values

    def _advance(self, actions: Any):
        B = self.num_envs
        a = np.asarray(actions)
        if a.size != B or not np.issubdtype(a.dtype, np.integer) or ((a != 0) & (a != 1)).any():
            raise ValueError(f"expected {B} integer actions in {{0, 1}}, got {a!r}")
        x, x_dot, theta, theta_dot = self.x, self.x_dot, self.theta, self.theta_dot  # (B,)
        force = np.where(a.reshape(B) == 1, self.force_mag, -self.force_mag)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        self.x = x = x + self.tau * x_dot
        self.x_dot = x_dot + self.tau * xacc
        self.theta = theta = theta + self.tau * theta_dot
        self.theta_dot = theta_dot + self.tau * thetaacc
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold)
            | (theta > self.theta_threshold)
        )
        success = ~terminated & (self._elapsed + 1 >= self.max_episode_steps)
        return np.ones(B), terminated, {"success": success}

    def _observe(self) -> np.ndarray:
        obs = np.empty((self.num_envs, 4), np.float32)  # float64 -> float32 as astype rounds
        obs[:, 0], obs[:, 1], obs[:, 2], obs[:, 3] = self.x, self.x_dot, self.theta, self.theta_dot
        return obs

    def _sub_env_attrs(self) -> dict[str, Any]:
        return {
            "length": self.length.tolist(),
            "gravity": self.gravity.tolist(),
            "state": list(np.stack([self.x, self.x_dot, self.theta, self.theta_dot], axis=1)),
        }


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

    def _make_batched_env(self, tasks: list[Task], seeds: list[int | None]) -> BatchedCartPoleEnv:
        return BatchedCartPoleEnv(tasks, seeds, self.max_episode_steps)
