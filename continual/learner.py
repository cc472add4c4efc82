"""The continual learner: a metarl learner (PPO or RL²) with regulariser, replay and drift plugins.

One iteration (:meth:`ContinualLearner.step`), CleanRL-style and in one place::

    traj = core.collect(rollout)                       # on-policy data of the current tasks
    A, R = core.targets(traj)                          # GAE (per episode, or per RL² trial)
    for epoch, minibatch of whole sequences:
        L = L_PPO(minibatch)                           # metarl.objectives.ppo_loss
          + regularizer.penalty(θ)                     # EWC / L2 (0 for none, PackNet)
          + c_replay · mean_b w_b (ℓ_π(b) + c_V ℓ_V(b))   # distillation on replayed old chunks
        ∇L → regularizer.mask_gradients → clip → Adam → regularizer.after_optimizer_step
        replay priorities of the chunks ← ℓ_π(b) + c_V ℓ_V(b)
    drift.update(stream value)  → with hidden boundaries, a detection ends the stage

and at the end of a stage (:meth:`ContinualLearner.end_stage`: called by the harness at a known
boundary, or by the learner itself at a detection)::

    regularizer.consolidate(θ, the stage's last iterations)    # EWC Fisher + anchor, PackNet
    replay.add(the stage's most recent sequences, relabelled by the final policy, stage id)
    stage += 1 (optionally reset Adam)

Replayed chunks come only from stages that have ended (their data enters the buffer at their
end), so the buffer's stage-proportional sampling mixes old stages: ``current_fraction`` of a
batch from the stage finished last, the rest split over older ones by size or recency.

The core is what differs between metarl learners: :class:`PPOCore` (episodic PPO, episodes run on
across iterations) and :class:`RL2Core` (one fresh trial per env per iteration, the state kept
across its episodes, GAE over the trial). A meta-learner (MAML family) owns its inner/outer loop
instead; it can use the plugins through the pure hooks :meth:`ContinualLearner.plugin_penalty`
(add to the outer loss), ``regularizer.mask_gradients`` / ``after_optimizer_step`` and
:meth:`ContinualLearner.end_stage`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from metarl.objectives import (
    explained_variance,
    gae,
    policy_evaluate,
)
from metarl.ppo import ppo_update
from metarl.rollout import Rollout
from metarl.trajectory import Trajectory

from .config import SequenceConfig
from .distill import distillation_losses
from .drift import DriftMonitor, StreamDetector
from .packnet import PackNet
from .regularizers import EWC, ConsolidationContext, L2Anchor, Regularizer
from .replay import ReplayBuffer

__all__ = ["LEARNER_SCHEMA_VERSION", "ContinualLearner", "PPOCore", "RL2Core"]

LEARNER_SCHEMA_VERSION = 1


class PPOCore:
    """Episodic PPO: ``num_steps`` per env per iteration, episodes continue across iterations;
    GAE per episode with time-limit bootstrapping."""

    reset_state = "episode"

    def __init__(self, config: SequenceConfig, max_episode_steps: int):
        self.ppo = config.ppo
        self.steps_per_iteration = self.ppo.num_envs * self.ppo.num_steps

    def collect(self, rollout: Rollout, seed: int) -> Trajectory:
        return rollout.collect(self.ppo.num_steps)

    def targets(self, traj: Trajectory) -> tuple[Tensor, Tensor]:
        return gae(
            traj.rewards,
            traj.values,
            traj.terminated,
            traj.truncated,
            traj.bootstrap_values,
            traj.last_value,
            self.ppo.gamma,
            self.ppo.gae_lambda,
        )

    def episode_returns(self, traj: Trajectory) -> list[float]:
        return traj.episode_returns()


class RL2Core:
    """RL² (in-context): each iteration runs one fresh trial of ``episodes_per_trial`` episodes
    per env (the policy state persists across them), GAE over the trial (only its end is
    terminal), as in :mod:`metarl.rl2`."""

    reset_state = "trial"

    def __init__(self, config: SequenceConfig, max_episode_steps: int):
        self.ppo = config.ppo
        self.episodes_per_trial = config.episodes_per_trial
        self.trial_steps = config.episodes_per_trial * max_episode_steps
        self.steps_per_iteration = self.ppo.num_envs * self.trial_steps

    def collect(self, rollout: Rollout, seed: int) -> Trajectory:
        rollout.new_trial(seed=seed)
        return rollout.collect(self.trial_steps)

    def targets(self, traj: Trajectory) -> tuple[Tensor, Tensor]:
        return gae(
            traj.rewards,
            traj.values,
            traj.trial_ends,
            torch.zeros_like(traj.truncated),
            traj.bootstrap_values,
            traj.last_value,
            self.ppo.gamma,
            self.ppo.gae_lambda,
        )

    def episode_returns(self, traj: Trajectory) -> list[float]:
        return traj.rewards.sum(0).double().tolist()  # the trial is the episode


def make_regularizer(config: SequenceConfig, policy: torch.nn.Module) -> Regularizer | None:
    r = config.regularizer
    if r.kind == "none":
        return None
    if r.kind == "l2":
        return L2Anchor(r.strength)
    if r.kind == "ewc":
        return EWC(r.strength, decay=r.ewc_decay, fisher=r.fisher, fisher_samples=r.fisher_samples)
    return PackNet(dict(policy.named_parameters()), prune_fraction=r.prune_fraction)


def make_monitor(config: SequenceConfig) -> DriftMonitor | None:
    d = config.drift
    if not d.enabled:
        return None
    det_cfg = d.page_hinkley.detector_config() if d.detector == "page_hinkley" else d.adwin
    detector = StreamDetector(d.detector, det_cfg, scale=d.scale, name=d.stream)
    return DriftMonitor({d.stream: detector}, reset_all_on_detection=True)


def _trajectory_state(traj: Trajectory) -> dict[str, Any]:
    return traj.as_dict()


class ContinualLearner:
    """PPO or RL² through a sequence of stages, with the plugins of ``config`` (see the module
    docstring).

    Args:
        policy: the sequence policy (in_context for RL²).
        config: the run's :class:`SequenceConfig`.
        max_episode_steps: the longest episode of the curriculum (RL² trial length).
    """

    def __init__(self, policy: torch.nn.Module, config: SequenceConfig, max_episode_steps: int):
        if (config.algo == "rl2") != bool(getattr(policy, "in_context", False)):
            raise ValueError("algo=rl2 needs an in_context policy, algo=ppo one that is not")
        self.policy, self.config = policy, config
        self.core = (PPOCore if config.algo == "ppo" else RL2Core)(config, max_episode_steps)
        self.steps_per_iteration = self.core.steps_per_iteration
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = self._new_optimizer()
        self.regularizer = make_regularizer(config, policy)
        self.replay = ReplayBuffer(config.replay.buffer) if config.replay.enabled else None
        self.monitor = make_monitor(config)
        self.rollout: Rollout | None = None
        self.stage = 0  # the learner's own stage: the known stage, or detections so far
        self.stage_iteration = 0
        self.iteration = 0
        self.global_step = 0
        self.detections: list[dict[str, Any]] = []
        self._stream_previous: float | None = None  # the stream's last value (transforms)
        self.recent: deque[Trajectory] = deque(maxlen=self._pending_len())
        # parameters at the start of the last iterations, for a detection that ends the stage
        # `discard_recent` iterations back
        keep = config.drift.discard_recent if config.boundaries == "hidden" else 0
        self._snapshots: deque[dict[str, Tensor]] = deque(maxlen=max(keep, 1))
        self._keep_snapshots = keep > 0

    def _new_optimizer(self) -> torch.optim.Optimizer:
        lr = self.config.ppo.learning_rate
        return torch.optim.Adam(self.policy.parameters(), lr=lr, eps=1e-5)

    def _pending_len(self) -> int:
        """Iterations of data kept for consolidation: the EWC Fisher's and the replay's share,
        plus the iterations a detection discards."""
        n = self.config.regularizer.fisher_iterations
        if self.replay is not None:
            n = max(n, math.ceil(self.config.replay.steps_per_stage / self.steps_per_iteration))
        return n + self.config.drift.discard_recent

    # -- environments ---------------------------------------------------------------------------
    def set_envs(self, envs: gym.vector.VectorEnv, task_ids: list[int], seed: int) -> None:
        """Act in ``envs`` from now on (the harness switches tasks at the curriculum's stage
        boundaries, whether or not the learner is told): fresh episodes, seeded ``seed``."""
        if self.rollout is None:
            self.rollout = Rollout(
                self.policy,
                envs,
                reset_state=self.core.reset_state,
                episodes_per_trial=getattr(self.core, "episodes_per_trial", None),
                generator=self.generator,
                task_ids=task_ids,
            )
        else:
            self.rollout.envs.close()
        self.rollout.new_trial(seed=seed, envs=envs, task_ids=task_ids)

    # -- one iteration --------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """Collect, update with the plugins, watch for drift; returns the iteration's log row."""
        if self.rollout is None:
            raise RuntimeError("call set_envs before step")
        start = time.perf_counter()
        if self._keep_snapshots:
            self._snapshots.append(
                {n: p.detach().clone() for n, p in self.policy.named_parameters()}
            )
        seed = self.config.seed * 1_000_003 + self.iteration + 1
        traj = self.core.collect(self.rollout, seed)
        with torch.no_grad():
            adv, ret = self.core.targets(traj)
            # the critic's error on fresh data, before this iteration fits it: the surprise that
            # a task switch causes
            value_error = float(((traj.values - ret) ** 2).mean())
        stats = self._update(traj, adv, ret)
        returns = self.core.episode_returns(traj)
        self.iteration += 1
        self.stage_iteration += 1
        self.global_step += self.steps_per_iteration
        self.recent.append(traj)
        row: dict[str, Any] = {
            "iteration": self.iteration,
            "learner_stage": self.stage,
            "episodic_return": float(np.mean(returns)) if returns else math.nan,
            "episodes": len(returns),
            **stats,
            "value_error": value_error,
            "explained_variance": float(explained_variance(traj.values, ret)),
            "learning_rate": self.config.ppo.learning_rate,
        }
        row["detection"] = self.observe(row)
        row["steps_per_second"] = self.steps_per_iteration / (time.perf_counter() - start)
        return row

    def _update(self, traj: Trajectory, adv: Tensor, ret: Tensor) -> dict[str, float]:
        """PPO-clip epochs over minibatches of whole sequences (:func:`metarl.ppo.ppo_update`),
        with the plugin losses added to each minibatch; returns the statistics averaged over all
        minibatches."""
        rp = self.config.replay
        replay_on = self.replay is not None and len(self.replay) > 0

        def extra_loss(stats: dict[str, float]) -> Tensor:
            penalty = self.plugin_penalty()
            stats["penalty"] = float(penalty.detach())
            if not replay_on:
                return penalty
            batch = self.replay.sample(rp.batch_size, self.generator)
            pi_loss, v_loss = distillation_losses(self.policy, batch, rp.policy_loss)
            per_chunk = pi_loss + rp.value_coef * v_loss  # (B,)
            replay_loss = (batch.weights * per_chunk).mean()
            self.replay.update_priorities(batch.keys, per_chunk.detach().clamp(min=0.0))
            stats["replay_policy_loss"] = float(pi_loss.detach().mean())
            stats["replay_value_loss"] = float(v_loss.detach().mean())
            return penalty + rp.coef * replay_loss

        reg = self.regularizer
        return ppo_update(
            self.policy,
            self.optimizer,
            traj,
            adv,
            ret,
            self.config.ppo,
            self.generator,
            extra_loss=extra_loss,
            mask_gradients=None if reg is None else lambda: reg.mask_module_gradients(self.policy),
            after_step=None
            if reg is None
            else lambda: reg.after_optimizer_step(dict(self.policy.named_parameters())),
            average=True,
        )

    def plugin_penalty(self, params: dict[str, Tensor] | None = None) -> Tensor:
        """The regulariser's penalty at ``params`` (default: the policy's own parameters), a
        scalar to add to any learner's loss."""
        if params is None:
            params = dict(self.policy.named_parameters())
        if self.regularizer is None:
            return torch.zeros(())
        return self.regularizer.penalty(params)

    # -- drift ----------------------------------------------------------------------------------
    def observe(self, row: dict[str, Any]) -> bool:
        """Feed an iteration's log row to the drift stream; True on a detection, which with
        hidden boundaries ends the learner's stage (:meth:`end_stage`)."""
        if self.monitor is None:
            return False
        stream = self.config.drift.stream
        if stream == "return":
            value = row["episodic_return"]  # NaN when no episode ended in this iteration
        elif stream == "value_loss":
            value = row["value_loss"]
        elif stream == "log_value_loss":
            value = math.log(max(row["value_loss"], 1e-12))
        else:  # critic surprise; explained variance is NaN where the returns do not vary
            value = math.log(max(row["value_loss"], 1e-12)) - max(row["explained_variance"], -5.0)
        if not math.isfinite(value):
            return False
        transform = self.config.drift.transform
        if transform != "none":
            previous, self._stream_previous = self._stream_previous, value
            if previous is None:
                return False
            value = value - previous
            if transform == "rise":
                value = max(value, 0.0)
            elif transform == "fall":
                value = max(-value, 0.0)
        fired = self.monitor.update(self.global_step, **{stream: value})
        if not fired:
            return False
        self.detections.append(
            {
                "step": self.global_step,
                "iteration": self.iteration,
                "stream": stream,
                "value": float(value),
                "learner_stage": self.stage,
            }
        )
        if self.config.boundaries == "hidden":
            self.end_stage(discard_recent=self.config.drift.discard_recent)
            if self.config.drift.reset_optimizer:
                self.optimizer = self._new_optimizer()
        return True

    # -- stage ends -----------------------------------------------------------------------------
    def end_stage(self, discard_recent: int = 0) -> None:
        """Close the learner's current stage: consolidate the regulariser on the stage's last
        iterations, store its most recent sequences for replay (relabelled by the final policy),
        and open the next stage. The last ``discard_recent`` iterations (collected after an
        undetected switch) are left out of both, and the stage's final parameters are those
        from before them: the anchor and the replay targets are the policy the stage ended
        with, not one that has already begun to learn the next task."""
        data = list(self.recent)
        params = dict(self.policy.named_parameters())
        if discard_recent:
            data = data[: max(0, len(data) - discard_recent)]
            if len(self._snapshots) >= discard_recent:
                params = dict(self._snapshots[-discard_recent])
        if self.regularizer is not None:
            fisher_data = data[-self.config.regularizer.fisher_iterations :]
            if not fisher_data:  # a detection right after a stage began: use what there is
                fisher_data = list(self.recent)[-1:]
            if fisher_data or not isinstance(self.regularizer, EWC):
                # one trajectory per sequence: the same Fisher (an average over all steps), but
                # fisher_diagonal's per-step Jacobian then costs B·T² instead of (B·T)²
                per_sequence = [t[[b]] for t in fisher_data for b in range(t.B)]
                context = ConsolidationContext(
                    policy=self.policy,
                    trajectories=per_sequence or None,
                    stage=self.stage,
                    generator=self.generator,
                )
                self.regularizer.consolidate(params, context)
        if self.replay is not None and data:
            for traj in self._replay_selection(data, params):
                self.replay.add_trajectory(
                    traj, stage=self.stage, policy=self.policy, params=params
                )
        self.stage += 1
        self.stage_iteration = 0
        self.recent.clear()
        self._snapshots.clear()

    def start_stage(self) -> None:
        """A known boundary: after :meth:`end_stage`, optionally clear the Adam moments."""
        if self.config.reset_optimizer:
            self.optimizer = self._new_optimizer()

    @torch.no_grad()
    def _replay_selection(
        self, data: list[Trajectory], params: dict[str, Tensor]
    ) -> list[Trajectory]:
        """The newest ``replay.steps_per_stage`` transitions of ``data`` (whole sequences),
        relabelled with the policy at ``params`` (distributions and values) if
        ``replay.relabel``."""
        budget, out = self.config.replay.steps_per_stage, []
        for traj in reversed(data):
            fit = min(traj.B, budget // traj.T)
            if fit <= 0:
                break
            part = traj if fit == traj.B else traj[list(range(fit))]
            if self.config.replay.relabel:
                ev = policy_evaluate(self.policy, params, part)
                part = dataclasses.replace(
                    part, dist_params=ev.dist_params, values=ev.values, log_probs=ev.log_probs
                )
            out.append(part)
            budget -= fit * traj.T
        return out[::-1]

    # -- PackNet --------------------------------------------------------------------------------
    def prune(self) -> None:
        """PackNet: prune now and retrain the kept weights for the rest of the stage."""
        if not isinstance(self.regularizer, PackNet):
            raise ValueError("prune needs regularizer.kind=packnet")
        self.regularizer.prune(dict(self.policy.named_parameters()))

    def evaluation_params(self, stage: int) -> dict[str, Tensor] | None:
        """Parameters to evaluate stage ``stage``'s tasks with: PackNet's masks for that stage,
        else None (the policy as it is)."""
        if not isinstance(self.regularizer, PackNet):
            return None
        task = min(stage, self.regularizer.task)
        return self.regularizer.masked_params(dict(self.policy.named_parameters()), task)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run, as tensors and plain data (weights_only)."""
        return {
            "schema_version": LEARNER_SCHEMA_VERSION,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "stage": self.stage,
            "stage_iteration": self.stage_iteration,
            "iteration": self.iteration,
            "global_step": self.global_step,
            "detections": [dict(d) for d in self.detections],
            "recent": [_trajectory_state(t) for t in self.recent],
            "regularizer": None if self.regularizer is None else self.regularizer.state_dict(),
            "replay": None if self.replay is None else self.replay.state_dict(),
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
            "stream_previous": self._stream_previous,
            "snapshots": [dict(p) for p in self._snapshots],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("schema_version") != LEARNER_SCHEMA_VERSION:
            raise ValueError(
                f"learner state schema_version {state.get('schema_version')} is not supported "
                f"(this code reads {LEARNER_SCHEMA_VERSION})"
            )
        self.policy.load_state_dict(state["policy"])
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.stage, self.stage_iteration = int(state["stage"]), int(state["stage_iteration"])
        self.iteration, self.global_step = int(state["iteration"]), int(state["global_step"])
        self.detections = [dict(d) for d in state["detections"]]
        self._stream_previous = state["stream_previous"]
        self._snapshots = deque(
            ({n: t.clone() for n, t in p.items()} for p in state["snapshots"]),
            maxlen=self._snapshots.maxlen,
        )
        self.recent = deque((Trajectory(**t) for t in state["recent"]), maxlen=self.recent.maxlen)
        for name in ("regularizer", "replay", "monitor"):
            mine, saved = getattr(self, name), state[name]
            if (mine is None) != (saved is None):
                raise ValueError(f"the checkpoint's {name} plugin does not match the config's")
            if mine is not None:
                mine.load_state_dict(saved)
