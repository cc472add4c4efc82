"""DIAYN: Diversity Is All You Need (Eysenbach et al., 2019), trained with the project's PPO.

A skill-conditioned sequence policy ``π(a | s, z)`` (``ssm.SequencePolicy`` reading
``s ⊕ onehot(z)``, with ``z ~ p(z)`` uniform and fixed for an episode) and a discriminator
``q_φ(z | s)`` (an MLP). The policy maximises the pseudo-reward

    r_t = log q_φ(z | s_{t+1}) - log p(z)          (+ optionally a curiosity bonus)

so each skill visits states from which it can be told apart; the discriminator is trained by
cross-entropy to predict ``z`` from the states the skills visit.

The machinery is the project's: :class:`skills.intrinsic.SkillConditionedVecEnv` appends ``z``,
:class:`skills.intrinsic.IntrinsicRewardVecEnv` turns the discriminator (a reward plugin) into
the reward, and :func:`skills.intrinsic.train_ppo_intrinsic` runs :class:`metarl.Rollout`,
:func:`metarl.gae` and :func:`metarl.ppo.ppo_update` (one :class:`metarl.ppo.PPOTrainer`), updating
the plugins after each batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ssm
from metarl.ppo import PPOConfig

from .extract import spec_for
from .intrinsic import (
    IntrinsicRewardVecEnv,
    RewardTerm,
    SkillConditionedVecEnv,
    make_curiosity,
    train_ppo_intrinsic,
)
from .library import SkillLibrary
from .skill import SkillInfo
from .spec import ArchSpec


class Discriminator(nn.Module):
    """``q_φ(z | s)``: an MLP from states to skill logits; also a reward plugin (it reads ``z``
    from the one-hot code that ends each observation)."""

    def __init__(
        self,
        state_dim: int,
        n_skills: int,
        hidden: int = 128,
        lr: float = 3e-4,
        update_epochs: int = 2,
        minibatch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.state_dim, self.n_skills = state_dim, n_skills
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Linear(state_dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, n_skills),
            )
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.update_epochs, self.minibatch_size = update_epochs, minibatch_size
        self._shuffle = torch.Generator().manual_seed(seed)

    def forward(self, states: Tensor) -> Tensor:  # (N, state_dim) -> (N, n_skills) logits
        return self.net(states.float())

    def _split(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs (N, state_dim + n_skills)`` -> ``(states, z)``."""
        if obs.shape[-1] != self.state_dim + self.n_skills:
            raise ValueError(
                f"expected observations of size {self.state_dim} + {self.n_skills}, "
                f"got {tuple(obs.shape)}"
            )
        return obs[:, : self.state_dim], obs[:, self.state_dim :].argmax(-1)

    @torch.no_grad()
    def intrinsic_reward(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> Tensor:
        """``log q(z | s') - log p(z)`` with ``p(z) = 1 / n_skills``."""
        states, z = self._split(next_obs)
        log_q = F.log_softmax(self(states), dim=-1).gather(-1, z[:, None]).squeeze(-1)
        return log_q + math.log(self.n_skills)

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """Cross-entropy on ``(s', z)`` pairs: ``update_epochs`` passes of minibatches."""
        states, z = self._split(batch["next_obs"])
        n = states.shape[0]
        loss = torch.zeros(())
        for _ in range(self.update_epochs):
            order = torch.randperm(n, generator=self._shuffle)
            for start in range(0, n, self.minibatch_size):
                idx = order[start : start + self.minibatch_size]
                loss = F.cross_entropy(self(states[idx]), z[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        return {"disc_loss": loss.item(), "disc_acc": self.accuracy(states, z)}

    @torch.no_grad()
    def accuracy(self, states: Tensor, z: Tensor) -> float:
        return float((self(states).argmax(-1) == z).float().mean())


@dataclass
class DIAYNConfig:
    """DIAYN with PPO (the PPO fields are :class:`metarl.ppo.PPOConfig`'s)."""

    n_skills: int = 8
    """number of discrete skills"""
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(
            total_steps=400_000, num_envs=16, num_steps=64, learning_rate=3e-4, ent_coef=0.01
        )
    )
    """the policy optimiser (total_steps, num_envs, num_steps, ...; seed is the run's seed)"""
    kind: str = "gru"
    """sequence layer kind of the policy"""
    d_model: int = 32
    """policy width"""
    n_layers: int = 1
    """policy depth"""
    layer_kwargs: dict = field(default_factory=dict)
    """keywords for ssm.make_layer"""
    box_head: str = "tanh"
    """for Box actions: "tanh" (squashed into the bounds) or "gaussian" (clipped by the env)"""
    log_std_init: float = -1.0
    """initial log standard deviation of a Box head (the SequencePolicy default is 0)"""
    disc_hidden: int = 128
    """discriminator hidden width"""
    disc_lr: float = 1e-3
    """discriminator Adam learning rate"""
    curiosity: str | None = None
    """None, "rnd" or "icm": a curiosity bonus added to the DIAYN reward"""
    curiosity_coef: float = 0.1
    """weight of the curiosity bonus"""


@dataclass
class DIAYNResult:
    policy: ssm.SequencePolicy
    discriminator: Discriminator
    config: DIAYNConfig
    history: list[dict[str, float]]


def make_diayn_policy(
    state_space: gym.spaces.Box, action_space: gym.Space, config: DIAYNConfig
) -> ssm.SequencePolicy:
    """``π(a | s, z)``: a SequencePolicy over ``s ⊕ onehot(z)``."""
    low = np.concatenate([state_space.low, np.zeros(config.n_skills)]).astype(np.float32)
    high = np.concatenate([state_space.high, np.ones(config.n_skills)]).astype(np.float32)
    policy = ssm.SequencePolicy(
        gym.spaces.Box(low, high, dtype=np.float32),
        action_space,
        kind=config.kind,
        d_model=config.d_model,
        n_layers=config.n_layers,
        box_head=config.box_head,
        layer_kwargs=config.layer_kwargs or None,
    )
    if hasattr(policy.head, "log_std"):
        with torch.no_grad():
            policy.head.log_std.fill_(config.log_std_init)
    return policy


def train_diayn(
    envs: gym.vector.VectorEnv,
    config: DIAYNConfig,
    log: Callable[[dict[str, float]], None] | None = None,
) -> DIAYNResult:
    """Discover ``config.n_skills`` skills on ``envs`` (flat Box observations, ``SAME_STEP``
    autoreset; its own reward is ignored). Returns the policy, the discriminator and one log row
    per iteration (PPO diagnostics, discriminator loss and accuracy, reward components)."""
    cfg = config.ppo
    if cfg.num_envs != envs.num_envs:
        raise ValueError(f"config.ppo.num_envs={cfg.num_envs} but envs has {envs.num_envs}")
    torch.manual_seed(cfg.seed)
    state_space = envs.single_observation_space
    state_dim = int(np.prod(state_space.shape))
    policy = make_diayn_policy(state_space, envs.single_action_space, config)
    disc = Discriminator(
        state_dim, config.n_skills, config.disc_hidden, config.disc_lr, seed=cfg.seed
    )
    n = config.n_skills
    terms = [RewardTerm("diayn", disc, 1.0)]
    if config.curiosity is not None:
        terms.append(
            RewardTerm(
                config.curiosity,
                make_curiosity(config.curiosity, state_dim, envs.single_action_space, cfg.seed),
                config.curiosity_coef,
                features=lambda o: o[:, :-n],  # curiosity about states, not skill codes
            )
        )
    skill_envs = SkillConditionedVecEnv(envs, n, seed=cfg.seed)
    reward_envs = IntrinsicRewardVecEnv(skill_envs, terms, extrinsic_coef=0.0)
    history = train_ppo_intrinsic(policy, reward_envs, cfg, log=log)
    return DIAYNResult(policy, disc, config, history)


@torch.no_grad()
def rollout_skills(
    policy: ssm.SequencePolicy,
    envs: gym.vector.VectorEnv,
    n_skills: int,
    episodes_per_skill: int,
    deterministic: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Play each skill ``episodes_per_skill`` times on ``envs`` (SAME_STEP). Returns
    ``final_states (n_skills, episodes, state_dim)``, and every visited state in ``states`` with
    its skill in ``state_skills``."""
    skill_envs = SkillConditionedVecEnv(envs, n_skills, seed=seed)
    b = envs.num_envs
    finals: list[list[np.ndarray]] = [[] for _ in range(n_skills)]
    states, state_skills = [], []
    wanted = [z for z in range(n_skills) for _ in range(episodes_per_skill)]
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(wanted), b):
        chunk = wanted[start : start + b]
        skills = np.array(chunk + [chunk[-1]] * (b - len(chunk)))
        skill_envs.fix_skills(skills)
        obs, _ = skill_envs.reset(seed=seed + start)
        state = policy.initial_state(b)
        active = np.ones(b, dtype=bool)
        active[len(chunk) :] = False
        while active.any():
            x = torch.as_tensor(obs, dtype=torch.float32)
            out, state = policy.step(x, state)
            a = policy.mode(out) if deterministic else policy.sample(out, gen)
            a_np = a.numpy()
            if isinstance(envs.single_action_space, gym.spaces.Box):
                a_np = np.clip(a_np, envs.single_action_space.low, envs.single_action_space.high)
            obs, _, term, trunc, info = skill_envs.step(a_np)
            nxt = obs.copy()
            if "_final_obs" in info:
                for i in np.flatnonzero(info["_final_obs"]):
                    nxt[i] = info["final_obs"][i]
            for i in np.flatnonzero(active):
                states.append(nxt[i, :-n_skills])
                state_skills.append(skills[i])
            for i in np.flatnonzero(active & (np.asarray(term) | np.asarray(trunc))):
                finals[skills[i]].append(nxt[i, :-n_skills])
                active[i] = False
    return {
        "final_states": np.stack([np.stack(f) for f in finals]),
        "states": np.stack(states),
        "state_skills": np.asarray(state_skills),
    }


def extract_diayn_skills(
    library: SkillLibrary,
    policy: ssm.SequencePolicy,
    n_skills: int,
    embeddings: np.ndarray,
    prefix: str = "diayn",
    metadata: Sequence[Mapping[str, Any]] | None = None,
    source: str = "diayn",
    budget: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> list[SkillInfo]:
    """Store the conditioned policy once as base ``<prefix>`` and add one skill per ``z``
    (``<prefix>/<z>``): the base plus a ``condition`` of ``onehot(z)``, so no tensors are
    duplicated. ``embeddings (n_skills, d)`` describe the skills for k-NN queries (e.g. each
    skill's mean final state)."""
    full = spec_for(policy)  # read off the policy and checked against it
    obs = dict(full.observation)
    state_dim = int(np.prod(obs["shape"])) - n_skills
    if state_dim < 1:
        raise ValueError(f"the policy's observations are too small for {n_skills} skill codes")
    base_spec = ArchSpec.from_json(
        {
            **full.to_json(),
            "observation": {**obs, "shape": [state_dim]},
            "condition": [0.0] * n_skills,
        }
    )
    library.add_base(prefix, policy, base_spec)
    params = {k: v.detach() for k, v in policy.state_dict().items()}
    items = []
    for z in range(n_skills):
        items.append(
            {
                "name": f"{prefix}/{z}",
                "params": params,
                "arch": base_spec.with_condition(np.eye(n_skills)[z]),
                "embedding": np.asarray(embeddings[z]),
                "base": prefix,
                "source": source,
                "budget": budget,
                "provenance": {**(provenance or {}), "skill_index": z, "n_skills": n_skills},
                "metadata": dict(metadata[z]) if metadata is not None else None,
            }
        )
    return library.add_many(items)
