"""In-context meta-RL (RL², Duan et al., 2016) with sequence policies, trained by PPO.

A *trial* is ``episodes_per_trial`` episodes of one task. The policy sees the previous action,
reward and done, and its recurrent state persists across the episodes of a trial and is reset
between trials, so whatever it learns about the task within a trial lives in its state. Each
iteration samples fresh training tasks, runs one trial per env, and takes a PPO update on the
whole trials. The return is the trial's: the trial is the meta-RL episode, so its end is the only
terminal step (nothing to bootstrap), and an episode end inside a trial is an ordinary transition
(the state carries over), so GAE carries credit from later episodes back to earlier ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ssm.policy import SequencePolicy
from ssm.util import legacy_stream_seed

from .collector import Collector, LocalCollector
from .config import check_bounds
from .plugins import Plugin
from .ppo import IterationStats, PPOConfig, PPOTrainer, run_trainer, trial_targets
from .rollout import Rollout
from .tasks import TaskFamily
from .trajectory import Trajectory


@dataclass
class RL2Config(PPOConfig):
    """PPO settings plus the trial structure (``total_steps`` counts env steps of all trials)."""

    episodes_per_trial: int = 1
    """episodes of the same task in one trial (the policy state persists across them)"""
    gamma: float = 0.99
    """discount over the whole trial"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, positive=("episodes_per_trial",))


def trial_batch(
    family: TaskFamily,
    collector: Collector,
    config: RL2Config,
    iteration: int,
    generator: torch.Generator,
):
    """Sample ``num_envs`` fresh training tasks and collect one trial per env (on the
    collector's backend: in this process, or in slices on Ray workers)."""
    seed = legacy_stream_seed(config.seed, iteration)
    tasks = family.sample(config.num_envs, split="train", seed=seed)
    trial = dict(reset_state="trial", episodes_per_trial=config.episodes_per_trial)
    with collector.open(tasks, 1, env_seed=seed, **trial) as task_set:
        steps = config.episodes_per_trial * family.max_episode_steps
        return task_set.collect(steps, seed, generator=generator)


class TrialSource:
    """RL²'s batches: every iteration, ``num_envs`` freshly sampled training tasks, one trial of
    ``episodes_per_trial`` episodes each (:func:`trial_batch`, on the collector's backend); GAE
    over whole trials (:func:`metarl.ppo.trial_targets`); the logged return is the trial's."""

    def __init__(self, family: TaskFamily, config: RL2Config, collector: Collector | None = None):
        self.family, self.config, self.collector = family, config, collector
        self.trial_steps = config.episodes_per_trial * family.max_episode_steps
        self.steps_per_iteration = self.trial_steps * config.num_envs
        self.generator: torch.Generator | None = None

    def bind(self, policy: SequencePolicy, generator: torch.Generator) -> None:
        self.generator = generator
        if self.collector is None:
            self.collector = LocalCollector(policy, self.family)

    def collect(self, iteration: int) -> Trajectory:
        return trial_batch(self.family, self.collector, self.config, iteration, self.generator)

    def targets(self, traj: Trajectory, gamma: float, gae_lambda: float):
        return trial_targets(traj, gamma, gae_lambda)

    def episode_returns(self, traj: Trajectory) -> list[float]:
        return traj.rewards.sum(0).double().tolist()  # the trial is the episode

    def restart(self, iteration: int) -> None:
        """Nothing to restart: every iteration starts fresh trials."""

    def close(self) -> None:
        self.collector.close()


class RL2Trainer(PPOTrainer):
    """RL² meta-training as a resumable trainer: :class:`metarl.ppo.PPOTrainer` over a
    :class:`TrialSource`.

    Every iteration draws its tasks and env seeds from ``(config.seed, iteration)`` and its
    action samples and minibatch orders from one generator, so the whole run is a function of the
    seed. :meth:`state_dict` holds everything that changes between iterations (parameters,
    optimiser moments, the generator, the iteration counter), which makes a resumed run continue
    bit-for-bit on CPU.
    """

    def __init__(
        self,
        policy: SequencePolicy,
        family: TaskFamily,
        config: RL2Config,
        collector: Collector | None = None,
        plugins: Iterable[Plugin] = (),
    ):
        if not policy.in_context:
            raise ValueError("RL² needs a SequencePolicy built with in_context=True")
        if config.num_envs % config.num_minibatches:
            raise ValueError("num_minibatches must divide num_envs (minibatches are whole trials)")
        self.family = family
        source = TrialSource(family, config, collector)
        super().__init__(policy, source, config, plugins=plugins, return_window=None)
        self.trial_steps = source.trial_steps

    @property
    def collector(self) -> Collector:
        return self.source.collector


def train_rl2(
    policy: SequencePolicy,
    family: TaskFamily,
    config: RL2Config,
    log: Callable[[IterationStats], None] | None = None,
) -> list[IterationStats]:
    """Meta-train an in-context ``policy`` (``in_context=True``) on ``family``'s train tasks."""
    return run_trainer(RL2Trainer(policy, family, config), log)


def evaluate_trials(
    policy: SequencePolicy,
    family: TaskFamily,
    tasks,
    episodes_per_trial: int,
    seed: int,
    deterministic: bool = False,
) -> dict[str, np.ndarray]:
    """One trial per task (held-out tasks, typically). Returns per-task arrays: ``rewards``
    ``(tasks, trial_steps)``, ``episode_returns`` ``(tasks, episodes_per_trial)``, ``regret``
    (where the env reports ``info["regret"]``, else absent) and ``success``."""
    envs = family.make_vector_env(list(tasks), seed=seed)
    rollout = Rollout(
        policy,
        envs,
        reset_state="trial",
        episodes_per_trial=episodes_per_trial,
        generator=torch.Generator().manual_seed(seed),
    )
    rollout.new_trial(seed=seed)
    with torch.no_grad():
        traj = rollout.collect(
            episodes_per_trial * family.max_episode_steps, deterministic=deterministic
        )
    rewards = traj.rewards.T.double().numpy()  # (tasks, T)
    per_episode = rewards.reshape(len(tasks), episodes_per_trial, -1).sum(-1)
    return {
        "rewards": rewards,
        "episode_returns": per_episode,
        "success": traj.success.T.double().numpy(),
        "actions": traj.actions.transpose(0, 1).numpy(),
    }
