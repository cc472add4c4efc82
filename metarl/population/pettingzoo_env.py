"""PettingZoo parallel-API games as a batched :class:`~metarl.population.envs.MultiAgentEnv`.

:class:`ParallelEnvBatch` steps ``B`` copies of any PettingZoo ``ParallelEnv`` whose agents all
have the same ``Discrete`` action space. Slots are ``possible_agents``; observations are
zero-padded to the largest observation size (simple_tag's prey sees 14 numbers, its predators 16).
An agent that leaves ``env.agents`` (terminated or truncated) is dead for the rest of the episode;
a copy whose agents are all gone stays idle until the next reset.

:func:`make_simple_spread` (cooperative: ``N`` agents cover ``N`` landmarks) and
:func:`make_simple_tag` (competitive: predators, team 0, chase prey, team 1) build the ``mpe2``
games; they need the ``marl`` extra (``pip install -e ".[marl]"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .envs import EnvStep, MultiAgentEnv

__all__ = ["ParallelEnvBatch", "make_simple_spread", "make_simple_tag", "team_by_prefix"]


def team_by_prefix(names: list[str]) -> np.ndarray:
    """Team ids from the agent-name prefix before the last ``_`` (``adversary_0`` -> adversary),
    numbered in order of first appearance."""
    prefixes: dict[str, int] = {}
    return np.array([prefixes.setdefault(n.rsplit("_", 1)[0], len(prefixes)) for n in names])


class ParallelEnvBatch(MultiAgentEnv):
    """``num_envs`` copies of ``make_env()``, a PettingZoo ``ParallelEnv``.

    Args:
        make_env: builds one copy.
        num_envs: the number of copies ``B``.
        teams: ``(N,)`` team of each slot (default: :func:`team_by_prefix`).
        role_fn: ``role_fn(env) -> {agent name: role}`` for the roles analysis (optional).
        n_roles: how many roles ``role_fn`` reports.
    """

    def __init__(
        self,
        make_env: Callable[[], Any],
        num_envs: int,
        teams: np.ndarray | None = None,
        role_fn: Callable[[Any], dict[str, int]] | None = None,
        n_roles: int = 0,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_env() for _ in range(num_envs)]
        first = self.envs[0]
        self.agent_names = list(first.possible_agents)
        self.num_envs, self.n_agents = num_envs, len(self.agent_names)
        sizes, ns = [], set()
        for name in self.agent_names:
            space, act = first.observation_space(name), first.action_space(name)
            if getattr(space, "shape", None) is None or len(space.shape) != 1:
                raise ValueError(f"agent {name!r}: only flat Box observations are supported")
            if not hasattr(act, "n"):
                raise ValueError(
                    f"agent {name!r} has action space {act}; the population needs Discrete actions"
                    " (build MPE games with continuous_actions=False)"
                )
            sizes.append(int(space.shape[0]))
            ns.add(int(act.n))
        if len(ns) != 1:
            raise ValueError(f"all agents must share one Discrete action space, got sizes {ns}")
        self.obs_sizes = sizes
        self.obs_dim, self.n_actions = max(sizes), ns.pop()
        self.teams = team_by_prefix(self.agent_names) if teams is None else np.asarray(teams)
        if self.teams.shape != (self.n_agents,):
            raise ValueError(f"teams must have shape ({self.n_agents},), got {self.teams.shape}")
        self.role_fn, self.n_roles = role_fn, n_roles
        self.alive = np.zeros((num_envs, self.n_agents), bool)
        self._acted = self.alive.copy()

    def _pack(self, b: int, obs: dict, out: np.ndarray) -> None:
        for i, name in enumerate(self.agent_names):
            if name in obs:
                o = np.asarray(obs[name], np.float32).reshape(-1)
                out[b, i, : o.shape[0]] = o

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        obs = np.zeros((self.num_envs, self.n_agents, self.obs_dim), np.float32)
        for b, env in enumerate(self.envs):
            o, _ = env.reset(seed=int(seed) + b)
            self._pack(b, o, obs)
            self.alive[b] = [name in env.agents for name in self.agent_names]
        obs *= self.alive[..., None]
        self._acted = self.alive.copy()
        return obs, self.alive.copy()

    def step(self, actions: np.ndarray) -> EnvStep:
        actions = np.asarray(actions)
        shape = (self.num_envs, self.n_agents)
        if actions.shape != shape:
            raise ValueError(f"actions must be {shape}, got {actions.shape}")
        obs = np.zeros((*shape, self.obs_dim), np.float32)
        rewards = np.zeros(shape, np.float32)
        term, trunc = np.zeros(shape, bool), np.zeros(shape, bool)
        self._acted = self.alive.copy()
        for b, env in enumerate(self.envs):
            if not self.alive[b].any():
                continue
            live = [name for i, name in enumerate(self.agent_names) if self.alive[b, i]]
            idx = {name: i for i, name in enumerate(self.agent_names)}
            o, r, te, tr, _ = env.step({name: int(actions[b, idx[name]]) for name in live})
            self._pack(b, o, obs)
            for name in live:
                i = idx[name]
                rewards[b, i] = float(r.get(name, 0.0))
                term[b, i] = bool(te.get(name, False))
                trunc[b, i] = bool(tr.get(name, False)) and not term[b, i]
            present = set(env.agents)
            self.alive[b] = [
                n in present and self.alive[b, i] for i, n in enumerate(self.agent_names)
            ]
        return EnvStep(obs, rewards, term, trunc, self.alive.copy())

    def roles(self) -> np.ndarray:
        """Roles (from ``role_fn``) of the agents that acted at the last step."""
        out = np.full((self.num_envs, self.n_agents), -1, np.int64)
        if self.role_fn is None:
            return out
        for b, env in enumerate(self.envs):
            for name, role in self.role_fn(env).items():
                i = self.agent_names.index(name)
                if self._acted[b, i]:
                    out[b, i] = int(role)
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _nearest_landmark(radius: float) -> Callable[[Any], dict[str, int]]:
    """Role of an MPE agent: the landmark within ``radius`` of it (nearest first), else -1."""

    def role_fn(env: Any) -> dict[str, int]:
        world = env.unwrapped.world
        marks = np.array([lm.state.p_pos for lm in world.landmarks])
        out = {}
        for agent in world.agents:
            d = np.linalg.norm(marks - agent.state.p_pos, axis=-1)
            out[agent.name] = int(d.argmin()) if d.min() <= radius else -1
        return out

    return role_fn


def _mpe() -> Any:
    try:
        import mpe2
    except ImportError as e:
        raise ImportError(
            "the MPE games need the marl extra: pip install -e '.[marl]' (pettingzoo, mpe2)"
        ) from e
    return mpe2


def make_simple_spread(
    num_envs: int, episode_len: int = 25, N: int = 3, local_ratio: float = 0.5, cover: float = 0.2
) -> ParallelEnvBatch:
    """mpe2 ``simple_spread_v3``: N agents, N landmarks, shared reward for covering them all
    (minus collisions). An agent's role is the landmark it sits on (within ``cover``)."""
    _mpe()
    from mpe2 import simple_spread_v3

    return ParallelEnvBatch(
        lambda: simple_spread_v3.parallel_env(
            N=N, local_ratio=local_ratio, max_cycles=episode_len, continuous_actions=False
        ),
        num_envs,
        teams=np.zeros(N, np.int64),
        role_fn=_nearest_landmark(cover),
        n_roles=N,
    )


def make_simple_tag(
    num_envs: int,
    episode_len: int = 25,
    num_good: int = 1,
    num_adversaries: int = 3,
    num_obstacles: int = 2,
) -> ParallelEnvBatch:
    """mpe2 ``simple_tag_v3``: predators (``adversary_*``, team 0) chase prey (``agent_*``,
    team 1)."""
    _mpe()
    from mpe2 import simple_tag_v3

    return ParallelEnvBatch(
        lambda: simple_tag_v3.parallel_env(
            num_good=num_good,
            num_adversaries=num_adversaries,
            num_obstacles=num_obstacles,
            max_cycles=episode_len,
            continuous_actions=False,
        ),
        num_envs,
    )
