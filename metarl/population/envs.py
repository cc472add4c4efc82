"""Batched multi-agent environments in a ``(B, agents, ...)`` layout, with alive masks.

A :class:`MultiAgentEnv` holds ``B`` copies of one game with a fixed list of ``N`` agent *slots*.
Each copy plays one episode between :meth:`~MultiAgentEnv.reset` calls (the population collects
whole, aligned episodes, so there is no autoreset). Agents may be absent from the start (a
variable number of agents per episode) or die mid-episode; ``alive[b, i]`` says whether slot ``i``
of copy ``b`` acts at the next step. Dead or absent slots observe zeros, their actions are
ignored and they receive no reward.

:class:`RoleGathering` is the built-in cooperative task where distinct roles pay off: ``K``
resource types sit at fixed places on a circle, and every step the team earns the fraction of types
that some agent covers. The resources lie further apart than two cover radii, so an agent covers at
most one type and full reward needs each type covered by a *different* agent. Pure numpy, all
copies stepped at once.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import numpy as np

__all__ = ["EnvStep", "MultiAgentEnv", "RoleGathering", "MOVES"]

# The MPE action order: no-op, -x, +x, -y, +y.
MOVES = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]], np.float32)


class EnvStep(NamedTuple):
    """What :meth:`MultiAgentEnv.step` returns; all arrays lead with ``(B, N)`` or ``(B,)``."""

    obs: np.ndarray
    """(B, N, D) float32: the next observation (for an agent whose episode just ended: its final
    observation, for bootstrapping); zeros for dead slots"""
    rewards: np.ndarray
    """(B, N) float32: reward of each agent that acted (0 for slots that did not)"""
    terminated: np.ndarray
    """(B, N) bool: the agent acted and its episode ended in a terminal state (died)"""
    truncated: np.ndarray
    """(B, N) bool: the agent acted and was cut off by the time limit"""
    alive: np.ndarray
    """(B, N) bool: the slot acts at the next step"""


class MultiAgentEnv(abc.ABC):
    """``num_envs`` copies of a game with ``n_agents`` slots, Discrete(``n_actions``) actions for
    every slot and observations padded to ``obs_dim``.

    ``teams[i]`` is the team of slot ``i`` (all 0 in a cooperative game); ``n_roles`` is the number
    of roles :meth:`roles` can report (0: the game defines none).
    """

    num_envs: int
    n_agents: int
    obs_dim: int
    n_actions: int
    agent_names: list[str]
    teams: np.ndarray
    n_roles: int = 0

    @property
    def n_teams(self) -> int:
        return int(self.teams.max()) + 1

    @abc.abstractmethod
    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Start a new episode in every copy: ``(obs (B, N, D), alive (B, N))``."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply ``actions (B, N)`` int (ignored for slots that are not alive)."""

    def roles(self) -> np.ndarray:
        """(B, N) int64: the role each slot fills now (-1: none, or dead)."""
        return np.full((self.num_envs, self.n_agents), -1, np.int64)

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


class RoleGathering(MultiAgentEnv):
    """The role-gathering task (see the module docstring).

    Positions live in ``[-1, 1]²``; action ``a`` moves an agent by ``step_size · MOVES[a]``.
    Resource ``k`` sits at angle ``π/2 + 2πk/K`` on a circle of radius ``ring``; agents start
    uniformly in ``[-spawn, spawn]²``. Each step every living agent receives the team reward::

        r_t = |{k : some living agent is within cover_radius of resource k}| / K
              + completion_bonus · [all K covered]

    The observation of slot ``i`` (``D = 3 + 2K + 3(N-1)``)::

        [own position (2), resource k - own position (2K), for each other slot j in slot order:
         (position_j - own position) · alive_j (2), alive_j (1), t / max_steps (1)]

    ``min_agents`` < N makes the number of agents vary: each episode, a uniform number in
    ``[min_agents, N]`` of randomly chosen slots play and the others are absent. ``death_rate`` is
    the per-step probability that a living agent dies (it drops out for the rest of the episode).
    """

    def __init__(
        self,
        num_envs: int,
        n_agents: int = 3,
        n_resources: int = 3,
        max_steps: int = 25,
        step_size: float = 0.1,
        cover_radius: float = 0.2,
        ring: float = 0.7,
        spawn: float = 0.2,
        completion_bonus: float = 0.0,
        death_rate: float = 0.0,
        min_agents: int | None = None,
    ):
        if n_agents < 1 or n_resources < 1 or num_envs < 1 or max_steps < 1:
            raise ValueError("num_envs, n_agents, n_resources and max_steps must be >= 1")
        gap = 2 * ring * np.sin(np.pi / n_resources) if n_resources > 1 else np.inf
        if gap <= 2 * cover_radius:
            raise ValueError(
                f"resources {gap:.3f} apart overlap with cover_radius {cover_radius}; one agent "
                "could cover two types (lower cover_radius or raise ring)"
            )
        if not 0.0 <= death_rate < 1.0:
            raise ValueError(f"death_rate must be in [0, 1), got {death_rate}")
        min_agents = n_agents if min_agents is None else min_agents
        if not 1 <= min_agents <= n_agents:
            raise ValueError(f"min_agents must be in [1, {n_agents}], got {min_agents}")
        self.num_envs, self.n_agents, self.n_resources = num_envs, n_agents, n_resources
        self.max_steps, self.step_size, self.cover_radius = max_steps, step_size, cover_radius
        self.spawn, self.completion_bonus = spawn, completion_bonus
        self.death_rate, self.min_agents = death_rate, min_agents
        angles = np.pi / 2 + 2 * np.pi * np.arange(n_resources) / n_resources
        self.resources = (ring * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)
        self.obs_dim = 3 + 2 * n_resources + 3 * (n_agents - 1)
        self.n_actions = len(MOVES)
        self.n_roles = n_resources
        self.agent_names = [f"agent_{i}" for i in range(n_agents)]
        self.teams = np.zeros(n_agents, np.int64)
        self._rng = np.random.default_rng(0)
        self.pos = np.zeros((num_envs, n_agents, 2), np.float32)
        self.alive = np.zeros((num_envs, n_agents), bool)
        self._acted = self.alive.copy()
        self.t = 0

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self._rng = np.random.default_rng(seed)
        b, n = self.num_envs, self.n_agents
        self.pos = self._rng.uniform(-self.spawn, self.spawn, (b, n, 2)).astype(np.float32)
        counts = self._rng.integers(self.min_agents, n + 1, size=b)
        order = np.argsort(self._rng.random((b, n)), axis=1)  # a random subset of slots plays
        self.alive = np.zeros((b, n), bool)
        np.put_along_axis(self.alive, order, np.arange(n)[None, :] < counts[:, None], axis=1)
        self.t = 0
        self._acted = self.alive.copy()
        return self._observe(), self.alive.copy()

    def covered(self, who: np.ndarray) -> np.ndarray:
        """(B, N) int64: the resource each agent marked in ``who`` covers, -1 for none."""
        d = np.linalg.norm(self.pos[:, :, None, :] - self.resources[None, None], axis=-1)
        inside = (d <= self.cover_radius) & who[:, :, None]  # (B, N, K)
        return np.where(inside.any(-1), inside.argmax(-1), -1).astype(np.int64)

    def roles(self) -> np.ndarray:
        """The resource each agent that acted at the last step covers (-1: none)."""
        return self.covered(self._acted)

    def step(self, actions: np.ndarray) -> EnvStep:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.n_agents):
            raise ValueError(
                f"actions must be {(self.num_envs, self.n_agents)}, got {actions.shape}"
            )
        acting = self.alive.copy()
        a = np.clip(actions, 0, self.n_actions - 1)
        move = self.step_size * MOVES[a] * acting[..., None]
        self.pos = np.clip(self.pos + move, -1.0, 1.0).astype(np.float32)
        self._acted = acting
        cover = self.covered(acting)
        hit = np.zeros((self.num_envs, self.n_resources), bool)
        rows, slots = np.nonzero(cover >= 0)
        hit[rows, cover[rows, slots]] = True
        team = hit.mean(-1) + self.completion_bonus * hit.all(-1)
        rewards = (team[:, None] * acting).astype(np.float32)
        self.t += 1
        dies = acting & (self._rng.random(acting.shape) < self.death_rate)
        self.alive = acting & ~dies
        truncated = self.alive & (self.t >= self.max_steps)
        if self.t >= self.max_steps:
            alive_next = np.zeros_like(self.alive)
        else:
            alive_next = self.alive.copy()
        obs = self._observe(final=acting)
        self.alive = alive_next
        return EnvStep(obs, rewards, dies, truncated, alive_next.copy())

    def _observe(self, final: np.ndarray | None = None) -> np.ndarray:
        """Observations of the living agents (and of ``final``: those whose episode just ended,
        so their last observation can be bootstrapped from)."""
        b, n, k = self.num_envs, self.n_agents, self.n_resources
        see = self.alive if final is None else final
        pos = self.pos
        rel_res = (self.resources[None, None] - pos[:, :, None]).reshape(b, n, 2 * k)
        others = []
        for i in range(n):
            js = [j for j in range(n) if j != i]
            alive_j = self.alive[:, js].astype(np.float32)[..., None]  # (B, N-1, 1)
            rel = (pos[:, js] - pos[:, i : i + 1]) * alive_j
            others.append(np.concatenate([rel, alive_j], -1).reshape(b, -1))
        other = np.stack(others, 1) if n > 1 else np.zeros((b, n, 0), np.float32)
        clock = np.full((b, n, 1), self.t / self.max_steps, np.float32)
        obs = np.concatenate([pos, rel_res, other, clock], -1).astype(np.float32)
        return obs * see[..., None]

    # -- a scripted expert, the quick source of library skills ------------------------------
    def goto_action(self, obs: np.ndarray, resource: int) -> np.ndarray:
        """The greedy action that moves an agent (from its observation ``(..., D)``) towards
        ``resource``: along the axis with the larger gap; no-op once within half a step."""
        rel = obs[..., 2 + 2 * resource : 4 + 2 * resource]
        return greedy_move(rel, self.step_size)


def greedy_move(rel: np.ndarray, step_size: float) -> np.ndarray:
    """The MPE-order action that reduces the larger component of ``rel (..., 2)``."""
    ax = np.abs(rel)
    horizontal = ax[..., 0] >= ax[..., 1]
    act = np.where(horizontal, np.where(rel[..., 0] > 0, 2, 1), np.where(rel[..., 1] > 0, 4, 3))
    return np.where(ax.max(-1) < step_size / 2, 0, act).astype(np.int64)
