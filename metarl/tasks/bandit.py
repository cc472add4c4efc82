"""k-armed Bernoulli bandits, the multi-armed bandit setting of RL^2 (Duan et al., 2016).

Task: arm probabilities ``p ~ U(0, 1)^k``. One episode is ``horizon`` pulls; pulling arm ``a``
gives reward ``r ~ Bernoulli(p_a)`` and ``info["regret"] = max(p) - p_a``. The observation is a
constant ``0`` in ``Box(0, 1, (1,))``: the policy learns about the arms only from the rewards it is
fed in context. Episodes end by truncation at ``horizon`` (``TimeLimit``).

Split: a checkerboard over the first two arms' probabilities (cells of width 1/20): train tasks
have ``floor(20 p_0) + floor(20 p_1)`` even, test tasks odd, so the sets are disjoint while each
still spans all of ``[0, 1]^k`` at a resolution coarser than 0.05.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metarl.tasks.base import Task, checkerboard_split
from metarl.tasks.batched import BatchedTaskEnv
from metarl.tasks.parametric import ParametricTaskFamily

_SPLIT_CELLS = 20
_DRAWS_AHEAD = 128


class BernoulliBanditEnv(gym.Env):
    """One bandit task: Bernoulli arms with fixed probabilities."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.probs = np.asarray(task.param("probs"), dtype=np.float64)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(len(self.probs))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any):
        a = int(action)
        if not 0 <= a < len(self.probs):
            raise ValueError(f"action must be an arm in [0, {len(self.probs)}), got {action!r}")
        reward = float(self.np_random.random() < self.probs[a])
        info = {"regret": float(self.probs.max() - self.probs[a]), "arm_prob": float(self.probs[a])}
        return np.zeros(1, np.float32), reward, False, False, info


class BatchedBanditEnv(BatchedTaskEnv):
    """:class:`BernoulliBanditEnv` for every sub-env at once: arm probabilities ``(B, k)``.

    Sub-env ``i``'s rewards are ``u < p_{i,a}`` with ``u`` the next ``random()`` of its own
    generator, as in :class:`BernoulliBanditEnv`. The uniforms are drawn ``_DRAWS_AHEAD`` at a time
    per sub-env (``rng.random(n)`` gives the same numbers as ``n`` calls of ``rng.random()``), so
    the rewards are identical while a generator's state runs ahead of the draws consumed.
    """

    def __init__(self, tasks: list[Task], seeds: list[int | None], max_episode_steps: int):
        self.probs = np.array([t.param("probs") for t in tasks], dtype=np.float64)  # (B, k)
        B, k = self.probs.shape
        super().__init__(
            tasks,
            seeds,
            max_episode_steps,
            gym.spaces.Box(0.0, 1.0, (1,), np.float32),
            gym.spaces.Discrete(k),
        )
        self._best = self.probs.max(axis=1)  # (B,)
        self._uniforms = np.empty((B, _DRAWS_AHEAD))
        self._next_uniform = np.full(B, _DRAWS_AHEAD)  # == _DRAWS_AHEAD: draw a fresh block

    def _reseeded(self, rows: np.ndarray) -> None:
        self._next_uniform[rows] = _DRAWS_AHEAD  # drawn ahead from the old generator: drop

    def _reset_rows(self, rows: np.ndarray, options: dict[str, Any] | None) -> None:
        pass  # a bandit has no state

    def _draw_uniforms(self) -> np.ndarray:
        """The next ``random()`` of every sub-env's generator, ``(B,)``."""
        for i in np.flatnonzero(self._next_uniform >= _DRAWS_AHEAD):
            self._uniforms[i] = self._rng(int(i)).random(_DRAWS_AHEAD)
            self._next_uniform[i] = 0
        u = self._uniforms[self._rows, self._next_uniform]
        self._next_uniform += 1
        return u

    def _advance(self, actions: Any):
        B, k = self.probs.shape
        raw = np.asarray(actions)
        if raw.size != B:
            raise ValueError(f"expected {B} actions (one arm per sub-env), got shape {raw.shape}")
        a = raw.reshape(B).astype(np.int64)
        if ((a < 0) | (a >= k)).any():
            raise ValueError(f"action must be an arm in [0, {k}), got {raw.reshape(B).tolist()}")
        p = self.probs[self._rows, a]
        reward = (self._draw_uniforms() < p).astype(np.float64)
        info = {"regret": self._best - p, "arm_prob": p}
        return reward, np.zeros(B, bool), info

    def _observe(self) -> np.ndarray:
        return np.zeros((self.num_envs, 1), np.float32)

    def _sub_env_attrs(self) -> dict[str, Any]:
        return {"probs": list(self.probs.copy())}


class BanditFamily(ParametricTaskFamily):
    """Bernoulli bandits with ``k`` arms and episodes of ``horizon`` pulls."""

    reports_success = False

    def __init__(self, k: int = 5, horizon: int = 100) -> None:
        if k < 2:
            raise ValueError(f"a bandit needs k >= 2 arms, got {k}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.k = k
        self.name = "bandit"
        self.max_episode_steps = horizon

    @property
    def observation_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(0.0, 1.0, (1,), np.float32)

    @property
    def action_space(self) -> gym.spaces.Discrete:
        return gym.spaces.Discrete(self.k)

    def draw_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"probs": rng.uniform(0.0, 1.0, self.k)}

    def split_of(self, params: dict[str, Any]) -> str:
        return checkerboard_split(np.asarray(params["probs"][:2]), _SPLIT_CELLS)

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if len(task.param("probs")) != self.k:
            raise ValueError(
                f"task {task} has {len(task.param('probs'))} arms, family has {self.k}"
            )

    def _make_task_env(self, task: Task) -> gym.Env:
        return BernoulliBanditEnv(task)

    def _make_batched_env(self, tasks: list[Task], seeds: list[int | None]) -> BatchedBanditEnv:
        return BatchedBanditEnv(tasks, seeds, self.max_episode_steps)


# --- classic bandit algorithms, the reference points for in-context learners ----------------------


def random_arms(probs: np.ndarray, horizon: int, rng: np.random.Generator) -> np.ndarray:
    """Arms pulled by a uniformly random player (``probs`` is only used for the arm count)."""
    return rng.integers(0, len(probs), horizon)


def ucb1_arms(probs: np.ndarray, horizon: int, rng: np.random.Generator) -> np.ndarray:
    """Arms pulled by UCB1 (Auer et al., 2002): each arm once, then argmax of
    ``mean_a + sqrt(2 ln t / n_a)``; rewards drawn ``Bernoulli(probs[a])`` from ``rng``."""
    k = len(probs)
    pulls, wins, arms = np.zeros(k), np.zeros(k), []
    for t in range(horizon):
        a = t if t < k else int(np.argmax(wins / pulls + np.sqrt(2 * np.log(t) / pulls)))
        pulls[a] += 1
        wins[a] += rng.random() < probs[a]
        arms.append(a)
    return np.array(arms)


def thompson_arms(probs: np.ndarray, horizon: int, rng: np.random.Generator) -> np.ndarray:
    """Arms pulled by Thompson sampling with a Beta(1, 1) prior on every arm."""
    k = len(probs)
    alpha, beta, arms = np.ones(k), np.ones(k), []
    for _ in range(horizon):
        a = int(np.argmax(rng.beta(alpha, beta)))
        r = rng.random() < probs[a]
        alpha[a] += r
        beta[a] += 1 - r
        arms.append(a)
    return np.array(arms)


def pseudo_regret(probs: np.ndarray, arms: np.ndarray) -> float:
    """Cumulative pseudo-regret ``Σ_t (max_a p_a - p_{a_t})``."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(np.sum(probs.max() - probs[np.asarray(arms, dtype=np.int64)]))


CLASSIC_PLAYERS = {"random": random_arms, "ucb1": ucb1_arms, "thompson": thompson_arms}
