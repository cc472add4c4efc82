"""Vector-env wrappers that let any learner use intrinsic rewards and skill codes (gymnasium).

- :class:`IntrinsicRewardVecEnv`: adds weighted bonuses from reward plugins (RND, ICM, DIAYN's
  discriminator) to the environment reward, and keeps the transitions for the plugins' updates.
  The rollout engine and PPO run on it unchanged.
- :class:`SkillConditionedVecEnv`: draws a skill ``z ~ p(z)`` (uniform) per episode and appends
  ``onehot(z)`` to the observations, which makes any sequence policy a skill-conditioned
  ``π(a | s, z)``.
- :func:`train_ppo_intrinsic`: ``metarl``'s PPO trainer on such an env, with the reward plugins
  updated after every batch (the :class:`IntrinsicRewardUpdate` trainer plugin).

Both respect ``SAME_STEP`` autoreset: a finished episode's last observation (``info["final_obs"]``)
is the ``s'`` of its last transition, so bonuses are computed on it, and it keeps the finished
episode's skill code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from metarl.plugins import Plugin
from metarl.ppo import PPOConfig, PPOTrainer

from .curiosity import ICM, RND, RewardPlugin


@dataclass
class RewardTerm:
    """``coef * plugin.intrinsic_reward(features(s), features(s'), a)``."""

    name: str
    plugin: RewardPlugin
    coef: float = 1.0
    features: Callable[[np.ndarray], np.ndarray] | None = None
    """maps a batch of observations to what the plugin sees (e.g. drop the skill code)"""


def next_observations(obs: np.ndarray, info: dict) -> np.ndarray:
    """``s'`` of each sub-env's transition: ``obs``, except the finished episodes' final ones."""
    nxt = np.array(obs, copy=True)
    if "_final_obs" in info:
        for i in np.flatnonzero(info["_final_obs"]):
            nxt[i] = info["final_obs"][i]
    return nxt


class IntrinsicRewardVecEnv(gym.vector.VectorWrapper):
    """``r = extrinsic_coef * r_env + Σ_i coef_i * r_i`` with each ``r_i`` from a reward plugin.

    Every transition ``(s, a, s')`` is kept until :meth:`update_plugins`, which passes them to
    each plugin's ``update`` and clears them. ``episode_stats`` holds the mean reward components
    since the last update, for logging.
    """

    def __init__(
        self, env: gym.vector.VectorEnv, terms: Sequence[RewardTerm], extrinsic_coef: float = 1.0
    ):
        super().__init__(env)
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward term names must be unique, got {names}")
        self.terms, self.extrinsic_coef = list(terms), extrinsic_coef
        self._obs: np.ndarray | None = None
        self._buffer: dict[str, list[np.ndarray]] = {"obs": [], "next_obs": [], "actions": []}
        self._sums: dict[str, float] = {}
        self._count = 0
        self._running = np.zeros(self.num_envs)
        self._episode_returns: list[float] = []

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = np.array(obs, copy=True)
        self._running[:] = 0.0
        return obs, info

    def step(self, actions):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(actions)
        nxt = next_observations(obs, info)
        a = np.asarray(actions)
        total = self.extrinsic_coef * np.asarray(reward, dtype=np.float64)
        self._add("extrinsic", np.asarray(reward, dtype=np.float64))
        for term in self.terms:
            f = term.features or (lambda x: x)
            r = term.plugin.intrinsic_reward(
                torch.as_tensor(f(self._obs)), torch.as_tensor(f(nxt)), torch.as_tensor(a)
            )
            r = r.detach().double().cpu().numpy()
            self._add(term.name, r)
            total = total + term.coef * r
        self._running += np.asarray(reward, dtype=np.float64)
        done = np.asarray(terminated) | np.asarray(truncated)
        self._episode_returns.extend(self._running[done].tolist())
        self._running[done] = 0.0
        self._buffer["obs"].append(self._obs)
        self._buffer["next_obs"].append(nxt)
        self._buffer["actions"].append(a.copy())
        self._count += 1
        self._obs = np.array(obs, copy=True)
        return obs, total, terminated, truncated, info

    def _add(self, name: str, r: np.ndarray) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(np.mean(r))

    def transitions(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in self._buffer.items()}

    def update_plugins(self) -> dict[str, float]:
        """Update every plugin on the transitions since the last call; returns their losses, the
        mean reward components (``reward/<name>``) and the mean extrinsic return of the episodes
        that ended (``extrinsic_return``, NaN if none did; ``episodes``)."""
        data = self.transitions()
        stats = {f"reward/{k}": v / max(self._count, 1) for k, v in self._sums.items()}
        ends = self._episode_returns
        stats["extrinsic_return"] = float(np.mean(ends)) if ends else float("nan")
        stats["episodes"] = float(len(ends))
        self._episode_returns = []
        if len(data["obs"]):
            for term in self.terms:
                f = term.features or (lambda x: x)
                batch: dict[str, Tensor] = {
                    "obs": torch.as_tensor(f(data["obs"])),
                    "next_obs": torch.as_tensor(f(data["next_obs"])),
                    "actions": torch.as_tensor(data["actions"]),
                }
                stats.update(term.plugin.update(batch))
        self._buffer = {k: [] for k in self._buffer}
        self._sums, self._count = {}, 0
        return stats


class SkillConditionedVecEnv(gym.vector.VectorWrapper):
    """Appends ``onehot(z)`` to every observation; ``z`` is drawn uniformly per episode, or fixed
    per sub-env with :meth:`fix_skills` (for evaluation)."""

    def __init__(self, env: gym.vector.VectorEnv, n_skills: int, seed: int = 0):
        super().__init__(env)
        space = env.single_observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"SkillConditionedVecEnv needs flat Box observations, got {space}")
        self.n_skills, self.state_dim = n_skills, int(space.shape[0])
        low = np.concatenate([space.low, np.zeros(n_skills)]).astype(np.float32)
        high = np.concatenate([space.high, np.ones(n_skills)]).astype(np.float32)
        self.single_observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, env.num_envs
        )
        self.rng = np.random.default_rng(seed)
        self.skills = np.zeros(env.num_envs, dtype=np.int64)
        self.fixed: np.ndarray | None = None

    def fix_skills(self, skills: Sequence[int] | None) -> None:
        """Run sub-env ``i`` with skill ``skills[i]`` from the next reset on (None: sample)."""
        self.fixed = None if skills is None else np.asarray(skills, dtype=np.int64)

    def _draw(self, rows: np.ndarray) -> None:
        if self.fixed is not None:
            self.skills[rows] = self.fixed[rows]
        else:
            self.skills[rows] = self.rng.integers(self.n_skills, size=len(rows))

    def _augment(self, obs: np.ndarray, skills: np.ndarray) -> np.ndarray:
        onehot = np.eye(self.n_skills, dtype=np.float32)[skills]
        return np.concatenate([np.asarray(obs, np.float32), onehot], axis=-1)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._draw(np.arange(self.num_envs))
        return self._augment(obs, self.skills), info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        done = np.flatnonzero(np.asarray(terminated) | np.asarray(truncated))
        if "_final_obs" in info:
            final = np.array(info["final_obs"], copy=True)
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = self._augment(info["final_obs"][i][None], self.skills[i : i + 1])[0]
            info = {**info, "final_obs": final}
        if len(done):
            self._draw(done)
        return self._augment(obs, self.skills), reward, terminated, truncated, info


def make_curiosity(name: str, obs_dim: int, action_space: gym.Space, seed: int = 0) -> RND | ICM:
    """An RND or ICM plugin for ``obs_dim``-sized observations and ``action_space`` actions."""
    if name == "rnd":
        return RND(obs_dim, seed=seed)
    if name == "icm":
        if isinstance(action_space, gym.spaces.Discrete):
            return ICM(obs_dim, n_actions=int(action_space.n), seed=seed)
        return ICM(obs_dim, action_dim=int(np.prod(action_space.shape)), seed=seed)
    raise ValueError(f"curiosity must be 'rnd' or 'icm', got {name!r}")


class IntrinsicRewardUpdate(Plugin):
    """A trainer plugin: after every batch, :meth:`IntrinsicRewardVecEnv.update_plugins` (the
    reward plugins learn from the batch's transitions) and their losses and reward components
    go into the iteration's row."""

    name = "intrinsic_rewards"

    def __init__(self, envs: IntrinsicRewardVecEnv):
        self.envs = envs

    def after_iteration(self, batch, row: dict) -> None:
        row.update(self.envs.update_plugins())


def train_ppo_intrinsic(
    policy: torch.nn.Module,
    envs: IntrinsicRewardVecEnv,
    config: PPOConfig,
    log: Callable[[dict[str, float]], None] | None = None,
    after_iteration: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """PPO on ``envs`` (an :class:`IntrinsicRewardVecEnv`): :class:`metarl.ppo.PPOTrainer` with the
    :class:`IntrinsicRewardUpdate` plugin. Returns one row per iteration: PPO's statistics, the
    plugins' losses and the mean reward components. ``after_iteration(row)`` may add entries to
    the row."""
    if config.num_envs != envs.num_envs:
        raise ValueError(f"config.num_envs={config.num_envs} but envs has {envs.num_envs}")
    trainer = PPOTrainer(policy, envs, config, plugins=[IntrinsicRewardUpdate(envs)])
    history: list[dict[str, float]] = []
    while not trainer.done:
        row = trainer.step().as_dict()
        if after_iteration is not None:
            after_iteration(row)
        history.append(row)
        if log is not None:
            log(row)
    return history
