"""PPO for recurrent sequence policies (Schulman et al., 2017), CleanRL-style, in one place.

One iteration: collect ``num_steps`` steps from every env with :class:`Rollout`; compute GAE
advantages (time-limit truncation bootstrapped); then ``update_epochs`` passes over minibatches of
*whole env sequences* (the policy is recurrent, so a minibatch re-runs sequence mode from each
sequence's recorded initial state with :func:`policy_evaluate`), minimising the PPO-clip loss.

Every diagnostic a researcher expects is logged per iteration: episodic return, policy and value
loss, entropy, approx-KL, clip fraction, explained variance, learning rate and steps per second.
A non-finite loss stops training with an error that names the quantity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch

from ssm.policy import SequencePolicy

from .objectives import explained_variance, gae, normalize_advantages, policy_evaluate, ppo_loss
from .rollout import Rollout


@dataclass
class PPOConfig:
    """PPO hyperparameters (defaults: CleanRL's, with a recurrent policy)."""

    total_steps: int = 200_000
    """environment steps over all envs"""
    num_envs: int = 8
    """parallel environments"""
    num_steps: int = 128
    """steps per env per iteration (the length of each training sequence)"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """GAE λ"""
    num_minibatches: int = 4
    """minibatches per epoch (each holds num_envs / num_minibatches whole sequences)"""
    update_epochs: int = 4
    """passes over each batch"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """PPO ratio clip ε"""
    clip_vloss: bool = True
    """clip the value loss too"""
    ent_coef: float = 0.01
    """entropy bonus weight"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """gradient clipping"""
    target_kl: float | None = None
    """stop an update early when approx-KL exceeds this"""
    seed: int = 1
    """the run's one seed"""


@dataclass
class IterationStats:
    iteration: int
    global_step: int
    episodic_return: float
    episodes: int
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    explained_variance: float
    learning_rate: float
    steps_per_second: float

    def as_dict(self) -> dict:
        return asdict(self)


def iteration_stats(
    iteration: int,
    global_step: int,
    episodic_return: float,
    episodes: int,
    stats: dict[str, float],
    values: torch.Tensor,
    returns: torch.Tensor,
    learning_rate: float,
    start_time: float,
) -> IterationStats:
    """One iteration's log row from the last update's loss statistics."""
    return IterationStats(
        iteration=iteration,
        global_step=global_step,
        episodic_return=episodic_return,
        episodes=episodes,
        policy_loss=stats["policy_loss"],
        value_loss=stats["value_loss"],
        entropy=stats["entropy"],
        approx_kl=stats["approx_kl"],
        clip_fraction=stats["clip_fraction"],
        explained_variance=float(explained_variance(values, returns)),
        learning_rate=learning_rate,
        steps_per_second=global_step / (time.perf_counter() - start_time),
    )


def _finite(name: str, value: torch.Tensor) -> None:
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"PPO: {name} is not finite ({value.item()}); stopping")


class PPOTrainer:
    """PPO as a resumable object: :meth:`step` runs one iteration.

    :meth:`state_dict` holds the parameters, optimiser moments, the sampling generator, the
    iteration counter and the recent-returns window. The environments' internal state (episodes in
    progress) is not captured: gymnasium envs offer no code-free way to save it. A resumed PPO run
    therefore restarts its episodes (reset with a seed derived from the run seed and the
    iteration), so it continues from the same parameters but is not bit-identical to an
    uninterrupted run. RL² and the meta-learners start fresh trials every iteration and resume
    exactly.
    """

    def __init__(self, policy: SequencePolicy, envs: gym.vector.VectorEnv, config: PPOConfig):
        if config.num_envs != envs.num_envs:
            raise ValueError(f"config.num_envs={config.num_envs} but envs has {envs.num_envs} envs")
        if config.num_envs % config.num_minibatches:
            raise ValueError(
                "num_minibatches must divide num_envs (minibatches are whole sequences)"
            )
        self.policy, self.envs, self.config = policy, envs, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.rollout = Rollout(policy, envs, generator=self.generator, seed=config.seed)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.batch = config.num_envs * config.num_steps
        self.iterations = max(1, config.total_steps // self.batch)
        self.iteration, self.global_step, self._elapsed = 0, 0, 0.0
        self.recent: list[float] = []

    @property
    def done(self) -> bool:
        return self.iteration >= self.iterations

    def step(self) -> IterationStats:
        config, it = self.config, self.iteration + 1
        start = time.perf_counter() - self._elapsed
        lr = config.learning_rate * ((1 - (it - 1) / self.iterations) if config.anneal_lr else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        traj = self.rollout.collect(config.num_steps)
        global_step = self.global_step + self.batch
        self.recent = (self.recent + traj.episode_returns())[-20:]
        with torch.no_grad():
            adv, ret = gae(
                traj.rewards,
                traj.values,
                traj.terminated,
                traj.truncated,
                traj.bootstrap_values,
                traj.last_value,
                config.gamma,
                config.gae_lambda,
            )
        stats = ppo_update(self.policy, self.optimizer, traj, adv, ret, config, self.generator)
        row = iteration_stats(
            it,
            global_step,
            float(np.mean(self.recent)) if self.recent else math.nan,
            len(self.recent),
            stats,
            traj.values,
            ret,
            lr,
            start,
        )
        for name in ("value_loss", "policy_loss", "entropy"):
            if not math.isfinite(getattr(row, name)):
                raise FloatingPointError(f"PPO: {name} is not finite at iteration {it}; stopping")
        self.iteration, self.global_step = it, global_step
        self._elapsed = time.perf_counter() - start
        return row

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "global_step": self.global_step,
            "elapsed": self._elapsed,
            "recent_returns": list(self.recent),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration, self.global_step = int(state["iteration"]), int(state["global_step"])
        self._elapsed = float(state["elapsed"])
        self.recent = [float(r) for r in state["recent_returns"]]
        self.rollout.new_trial(seed=self.config.seed * 1_000_003 + self.iteration)


def train_ppo(
    policy: SequencePolicy,
    envs: gym.vector.VectorEnv,
    config: PPOConfig,
    log: Callable[[IterationStats], None] | None = None,
) -> list[IterationStats]:
    """Train ``policy`` on ``envs`` (SAME_STEP autoreset) with PPO; returns per-iteration stats."""
    return run_trainer(PPOTrainer(policy, envs, config), log)


def run_trainer(trainer, log: Callable | None = None) -> list:
    """Step a resumable trainer (``done``/``step()``) to the end; returns its log rows."""
    history = []
    while not trainer.done:
        row = trainer.step()
        history.append(row)
        if log is not None:
            log(row)
    return history


def ppo_update(
    policy: SequencePolicy,
    optimizer: torch.optim.Optimizer,
    traj,
    adv: torch.Tensor,
    ret: torch.Tensor,
    config: PPOConfig,
    gen: torch.Generator,
    extra_loss: Callable[[dict[str, float]], torch.Tensor] | None = None,
    mask_gradients: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    average: bool = False,
) -> dict[str, float]:
    """``update_epochs`` passes of PPO-clip over minibatches of whole env sequences; returns the
    last minibatch's loss statistics (``average=True``: their mean over all minibatches).

    Hooks for learners that add to PPO (the continual learner's regularisers and replay):
    ``extra_loss(stats)`` returns a term added to each minibatch's loss (and may record its own
    statistics in ``stats``); ``mask_gradients()`` runs after ``backward`` and before clipping;
    ``after_step()`` runs after each optimiser step.
    """
    num_envs = traj.B
    per_mb = num_envs // config.num_minibatches
    stats: dict[str, float] = {}
    sums: dict[str, float] = {}
    count = 0
    for _ in range(config.update_epochs):
        order = torch.randperm(num_envs, generator=gen)
        for k in range(config.num_minibatches):
            idx = order[k * per_mb : (k + 1) * per_mb]
            sub = traj[idx]
            mb_adv = normalize_advantages(adv[:, idx]) if config.norm_adv else adv[:, idx]
            ev = policy_evaluate(policy, None, sub)
            loss, parts = ppo_loss(
                ev.log_probs,
                sub.log_probs,
                mb_adv,
                ev.values,
                sub.values,
                ret[:, idx],
                ev.entropy,
                clip_coef=config.clip_coef,
                vf_coef=config.vf_coef,
                ent_coef=config.ent_coef,
                clip_vloss=config.clip_vloss,
            )
            stats = {name: float(v) for name, v in parts.items()}
            if extra_loss is not None:
                loss = loss + extra_loss(stats)
            _finite("loss", loss)
            optimizer.zero_grad()
            loss.backward()
            if mask_gradients is not None:
                mask_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            if after_step is not None:
                after_step()
            stats["grad_norm"] = float(grad_norm)
            for name, v in stats.items():
                sums[name] = sums.get(name, 0.0) + v
            count += 1
        if config.target_kl is not None and stats["approx_kl"] > config.target_kl:
            break
    return {name: v / count for name, v in sums.items()} if average else stats


def evaluate_returns(
    policy: SequencePolicy,
    envs: gym.vector.VectorEnv,
    episodes: int,
    seed: int = 0,
    deterministic: bool = True,
    max_steps: int = 100_000,
) -> list[float]:
    """Returns of the first ``episodes`` completed episodes, acting greedily by default."""
    rollout = Rollout(policy, envs, generator=torch.Generator().manual_seed(seed), seed=seed)
    returns: list[float] = []
    steps = 0
    while len(returns) < episodes and steps < max_steps:
        traj = rollout.collect(256, deterministic=deterministic)
        returns += traj.episode_returns()
        steps += 256 * envs.num_envs
    return returns[:episodes]
