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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ssm.policy import SequencePolicy
from ssm.util import legacy_stream_seed

from .config import check_bounds
from .objectives import explained_variance, gae, normalize_advantages, policy_evaluate, ppo_loss
from .plugins import Plugin, PluginList
from .rollout import Rollout
from .trajectory import Trajectory


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
    fused_step: bool = False
    """act through the fused C++ policy step (ssm.fast_step): faster acting, the same outputs to
    float rounding (~1e-7), so runs are no longer bit-identical to the reference path"""

    def __post_init__(self) -> None:
        check_bounds(
            self,
            positive=(
                "total_steps",
                "num_envs",
                "num_steps",
                "learning_rate",
                "num_minibatches",
                "update_epochs",
                "clip_coef",
                "max_grad_norm",
                "target_kl",
            ),
            nonnegative=("ent_coef", "vf_coef"),
            unit_interval=("gamma", "gae_lambda"),
        )


@dataclass
class IterationStats:
    """One PPO (or RL²) iteration's log row."""

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
    extras: dict[str, Any] = field(default_factory=dict)
    """everything else: grad_norm, value_error (the critic's error on the fresh batch before the
    update), and what plugins record (penalty, replay losses, intrinsic rewards, ...)"""

    def as_dict(self) -> dict:
        row = asdict(self)
        extras = row.pop("extras")
        return {**row, **extras}


def _finite(name: str, value: torch.Tensor) -> None:
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"PPO: {name} is not finite ({value.item()}); stopping")


# --- where a batch comes from -----------------------------------------------------------------


class BatchSource(Protocol):
    """Where a PPO iteration's data comes from, and how its advantages are computed.

    :class:`EpisodeSource`: episodes run on across iterations (plain PPO); :class:`metarl.rl2.
    TrialSource`: fresh trials of freshly sampled tasks every iteration (RL²). The continual layer
    adds its own over a curriculum stage's envs."""

    steps_per_iteration: int
    """environment steps one :meth:`collect` takes (over all envs)"""

    def bind(self, policy: SequencePolicy, generator: torch.Generator) -> None:
        """Act with ``policy``, sampling actions from ``generator`` (the trainer's)."""

    def collect(self, iteration: int) -> Trajectory:
        """The ``(T, B)`` batch of iteration ``iteration`` (from 1)."""

    def targets(self, traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        """Advantages and returns of ``traj``."""

    def episode_returns(self, traj: Trajectory) -> list[float]:
        """The returns of the episodes (RL²: trials) that ended in ``traj``."""

    def restart(self, iteration: int) -> None:
        """After a resume at ``iteration``: start fresh episodes where some were cut off."""

    def close(self) -> None:
        """Release the envs."""


class EpisodeSource:
    """``num_steps`` steps of every env per iteration, episodes running on across iterations; GAE
    per episode with time-limit truncation bootstrapped. Episodes cut by a resume restart with a
    seed derived from the run seed and the iteration (gymnasium envs cannot be saved)."""

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        num_steps: int,
        seed: int | None = None,
        task_ids: list[int] | None = None,
        fused_step: bool = False,
    ):
        self.envs, self.num_steps, self.seed, self.task_ids = envs, num_steps, seed, task_ids
        self.fused_step = fused_step
        self.steps_per_iteration = envs.num_envs * num_steps
        self.rollout: Rollout | None = None

    def bind(self, policy: SequencePolicy, generator: torch.Generator) -> None:
        self.rollout = Rollout(
            policy,
            self.envs,
            generator=generator,
            seed=self.seed,
            task_ids=self.task_ids,
            fused_step=self.fused_step,
        )

    def collect(self, iteration: int) -> Trajectory:
        return self.rollout.collect(self.num_steps)

    def targets(self, traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        return episode_targets(traj, gamma, gae_lambda)

    def episode_returns(self, traj: Trajectory) -> list[float]:
        return traj.episode_returns()

    def restart(self, iteration: int) -> None:
        self.rollout.new_trial(seed=legacy_stream_seed(self.seed or 0, iteration))

    def close(self) -> None:
        self.envs.close()


def episode_targets(traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE per episode, with time-limit truncation bootstrapped from the recorded values."""
    return gae(
        traj.rewards,
        traj.values,
        traj.terminated,
        traj.truncated,
        traj.bootstrap_values,
        traj.last_value,
        gamma,
        gae_lambda,
    )


def trial_targets(traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE over whole trials: the trial is the meta-RL episode, so its end is the only terminal
    step (nothing to bootstrap), and an episode end inside it is an ordinary transition."""
    return gae(
        traj.rewards,
        traj.values,
        traj.trial_ends,
        torch.zeros_like(traj.truncated),
        traj.bootstrap_values,
        traj.last_value,
        gamma,
        gae_lambda,
    )


# --- the trainer ------------------------------------------------------------------------------


class PPOTrainer:
    """PPO as a resumable trainer: :meth:`step` runs one iteration (collect, GAE, PPO-clip epochs
    with the plugins' loss terms and hooks). RL² and the continual learner's PPO are this trainer
    with another :class:`BatchSource`.

    Args:
        policy: the sequence policy.
        source: a :class:`BatchSource`, or a vector env (SAME_STEP autoreset) for plain PPO.
        config: the PPO settings (``total_steps`` sets :attr:`iterations`).
        plugins: :class:`metarl.plugins.Plugin` s: loss terms, gradient masks, step hooks.
        return_window: the logged ``episodic_return`` averages the last this many episodes
            (None: only this iteration's).
        average_stats: log the loss statistics averaged over all minibatches (else the last
            minibatch's, CleanRL's choice).

    :meth:`state_dict` holds the parameters, optimiser moments, the sampling generator, the
    counters and the recent-returns window. The environments' internal state (episodes in
    progress) is not captured: a resumed plain-PPO run restarts its episodes, so it continues
    from the same parameters but is not bit-identical to an uninterrupted run. RL² (fresh trials
    every iteration) resumes exactly.
    """

    def __init__(
        self,
        policy: SequencePolicy,
        source: BatchSource | gym.vector.VectorEnv,
        config: PPOConfig,
        plugins: Iterable[Plugin] = (),
        return_window: int | None = 20,
        average_stats: bool = False,
    ):
        if isinstance(source, gym.vector.VectorEnv):
            if config.num_envs != source.num_envs:
                raise ValueError(
                    f"config.num_envs={config.num_envs} but envs has {source.num_envs} envs"
                )
            source = EpisodeSource(
                source, config.num_steps, seed=config.seed, fused_step=config.fused_step
            )
        if config.num_envs % config.num_minibatches:
            raise ValueError(
                "num_minibatches must divide num_envs (minibatches are whole sequences)"
            )
        self.policy, self.source, self.config = policy, source, config
        self.plugins = PluginList(plugins)
        self.return_window, self.average_stats = return_window, average_stats
        self.generator = torch.Generator().manual_seed(config.seed)
        source.bind(policy, self.generator)
        self.optimizer = self.new_optimizer()
        self.iterations = max(1, config.total_steps // source.steps_per_iteration)
        self.iteration, self.global_step, self._elapsed = 0, 0, 0.0
        self.recent: list[float] = []
        self.last_batch: Trajectory | None = None

    @property
    def rollout(self) -> Rollout | None:
        """The rollout engine of an episode source (None for other sources)."""
        return getattr(self.source, "rollout", None)

    @property
    def done(self) -> bool:
        return self.iteration >= self.iterations

    def new_optimizer(self) -> torch.optim.Optimizer:
        """A fresh Adam over the policy (the continual layer may clear the moments at a stage)."""
        return torch.optim.Adam(self.policy.parameters(), lr=self.config.learning_rate, eps=1e-5)

    def step(self) -> IterationStats:
        """Collect, compute advantages, run the PPO-clip epochs; returns the iteration's row."""
        config, it = self.config, self.iteration + 1
        start = time.perf_counter() - self._elapsed
        lr = config.learning_rate * ((1 - (it - 1) / self.iterations) if config.anneal_lr else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        traj = self.source.collect(it)
        global_step = self.global_step + self.source.steps_per_iteration
        with torch.no_grad():
            adv, ret = self.source.targets(traj, config.gamma, config.gae_lambda)
            # the critic's error on fresh data, before this iteration fits it (what a task
            # switch makes jump)
            value_error = float(((traj.values - ret) ** 2).mean())
        stats = ppo_update(
            self.policy,
            self.optimizer,
            traj,
            adv,
            ret,
            config,
            self.generator,
            plugins=self.plugins,
            average=self.average_stats,
        )
        returns = self.source.episode_returns(traj)
        if self.return_window:
            self.recent = (self.recent + returns)[-self.return_window :]
            returns = self.recent
        main = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        row = IterationStats(
            iteration=it,
            global_step=global_step,
            episodic_return=float(np.mean(returns)) if returns else math.nan,
            episodes=len(returns),
            **{name: stats[name] for name in main},
            explained_variance=float(explained_variance(traj.values, ret)),
            learning_rate=lr,
            steps_per_second=global_step / (time.perf_counter() - start),
            extras={
                "value_error": value_error,
                **{k: v for k, v in stats.items() if k not in main},
            },
        )
        self.plugins.after_iteration(traj, row.extras)
        for name in ("value_loss", "policy_loss", "entropy"):
            if not math.isfinite(getattr(row, name)):
                raise FloatingPointError(f"PPO: {name} is not finite at iteration {it}; stopping")
        self.iteration, self.global_step = it, global_step
        self._elapsed = time.perf_counter() - start
        self.last_batch = traj
        return row

    def close(self) -> None:
        """Release the source's envs and workers."""
        self.source.close()

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
        self.recent = [float(r) for r in state.get("recent_returns", [])]
        self.source.restart(self.iteration)


def train_ppo(
    policy: SequencePolicy,
    envs: gym.vector.VectorEnv,
    config: PPOConfig,
    log: Callable[[IterationStats], None] | None = None,
) -> list[IterationStats]:
    """Train ``policy`` on ``envs`` (SAME_STEP autoreset) with PPO; returns per-iteration stats."""
    return run_trainer(PPOTrainer(policy, envs, config), log)


def run_trainer(trainer, log: Callable | None = None) -> list:
    """Step a trainer to its end in memory (no run directory; :mod:`metarl.harness` is the
    loop with one); returns its log rows."""
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
    plugins: PluginList | None = None,
    average: bool = False,
) -> dict[str, float]:
    """``update_epochs`` passes of PPO-clip over minibatches of whole env sequences; returns the
    last minibatch's loss statistics (``average=True``: their mean over all minibatches).

    With ``plugins`` (:mod:`metarl.plugins`): each minibatch's loss gets their loss terms at the
    policy's parameters (they may record statistics in the row), their gradient masks run after
    ``backward`` and before clipping, and their ``after_step`` after each optimiser step.
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
            if plugins:
                extra = plugins.loss(dict(policy.named_parameters()), stats)
                if extra is not None:
                    loss = loss + extra
            _finite("loss", loss)
            optimizer.zero_grad()
            loss.backward()
            if plugins:
                plugins.mask_module_gradients(policy)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            if plugins:
                plugins.after_step(dict(policy.named_parameters()))
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
