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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ssm.policy import SequencePolicy

from .collector import Collector, LocalCollector
from .objectives import gae
from .ppo import IterationStats, PPOConfig, iteration_stats, ppo_update, run_trainer
from .rollout import Rollout
from .tasks import TaskFamily


@dataclass
class RL2Config(PPOConfig):
    """PPO settings plus the trial structure (``total_steps`` counts env steps of all trials)."""

    episodes_per_trial: int = 1
    """episodes of the same task in one trial (the policy state persists across them)"""
    gamma: float = 0.99
    """discount over the whole trial"""


def trial_batch(
    family: TaskFamily,
    collector: Collector,
    config: RL2Config,
    iteration: int,
    generator: torch.Generator,
):
    """Sample ``num_envs`` fresh training tasks and collect one trial per env (on the
    collector's backend: in this process, or in slices on Ray workers)."""
    seed = config.seed * 1_000_003 + iteration
    tasks = family.sample(config.num_envs, split="train", seed=seed)
    trial = dict(reset_state="trial", episodes_per_trial=config.episodes_per_trial)
    with collector.open(tasks, 1, env_seed=seed, **trial) as task_set:
        steps = config.episodes_per_trial * family.max_episode_steps
        return task_set.collect(steps, seed, generator=generator)


class RL2Trainer:
    """RL² meta-training as a resumable object: :meth:`step` runs one iteration.

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
    ):
        if not policy.in_context:
            raise ValueError("RL² needs a SequencePolicy built with in_context=True")
        if config.num_envs % config.num_minibatches:
            raise ValueError("num_minibatches must divide num_envs (minibatches are whole trials)")
        self.policy, self.family, self.config = policy, family, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.collector = collector or LocalCollector(policy, family)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.trial_steps = config.episodes_per_trial * family.max_episode_steps
        self.iterations = max(1, config.total_steps // (self.trial_steps * config.num_envs))
        self.iteration, self.global_step, self._elapsed = 0, 0, 0.0

    @property
    def done(self) -> bool:
        return self.iteration >= self.iterations

    def step(self) -> IterationStats:
        """One iteration: fresh train tasks, one trial per env, a PPO update on whole trials."""
        config, it = self.config, self.iteration + 1
        start = time.perf_counter() - self._elapsed
        lr = config.learning_rate * ((1 - (it - 1) / self.iterations) if config.anneal_lr else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        traj = trial_batch(self.family, self.collector, config, it, self.generator)
        global_step = self.global_step + self.trial_steps * config.num_envs
        with torch.no_grad():  # the trial is the episode: only its end is terminal
            no_cut = torch.zeros_like(traj.truncated)
            adv, ret = gae(
                traj.rewards,
                traj.values,
                traj.trial_ends,
                no_cut,
                traj.bootstrap_values,
                traj.last_value,
                config.gamma,
                config.gae_lambda,
            )
        stats = ppo_update(self.policy, self.optimizer, traj, adv, ret, config, self.generator)
        trial_return = float(traj.rewards.sum(0).mean())
        row = iteration_stats(
            it, global_step, trial_return, traj.B, stats, traj.values, ret, lr, start
        )
        for name in ("value_loss", "policy_loss", "entropy"):
            if not math.isfinite(getattr(row, name)):
                raise FloatingPointError(f"RL²: {name} is not finite at iteration {it}; stopping")
        self.iteration, self.global_step = it, global_step
        self._elapsed = time.perf_counter() - start
        return row

    def close(self) -> None:
        """Release the collector's workers."""
        self.collector.close()

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "global_step": self.global_step,
            "elapsed": self._elapsed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration, self.global_step = int(state["iteration"]), int(state["global_step"])
        self._elapsed = float(state["elapsed"])


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
