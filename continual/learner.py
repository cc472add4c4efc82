"""The continual learner: any metarl trainer (PPO, RL², the MAML family) with the continual
plugins, through a sequence of stages.

The learner *wraps* a trainer; it re-implements nothing of it. One iteration
(:meth:`ContinualLearner.step`)::

    snapshot θ                                   (a detection may end the stage a few
                                                  iterations back)
    row = trainer.step()                         the trainer's own iteration, with the plugins:
        L = L_trainer(θ)                         PPO/RL²: each minibatch's PPO loss;
                                                 MAML family: the outer loss at θ
          + regularizer.penalty(θ)               EWC / L2 (0 for PackNet)
          + c_replay · mean_b w_b (ℓ_π(b) + c_V ℓ_V(b))   distillation on replayed old chunks
        ∇L → masks (PackNet) → clip → optimiser → after_step (PackNet)
    recent ← trainer.last_batch                  the data a stage end consolidates on
    drift.update(stream value)                   with hidden boundaries, a detection ends the stage

and at the end of a stage (:meth:`ContinualLearner.end_stage`, the one place a stage ends: called
by the harness at a known boundary, or by the learner itself at a detection) every plugin's
``end_stage`` sees the stage's final parameters and its most recent batches: EWC estimates its
Fisher and anchors, L2 anchors, PackNet freezes the stage's weights, replay stores the stage's
newest sequences under its id. Then the next stage opens (optionally with fresh Adam moments).

What the Fisher and the replay see for each learner: PPO, the rollouts; RL², the trials; the
MAML family, the support trajectories collected with θ (the meta-initialisation), so EWC there
is the Fisher of π_θ on the stage's states, and the penalty acts on θ through the outer loss.
For MAML/FOMAML, ``replay.kind=meta`` replays *tasks* instead (:mod:`continual.meta_replay`):
stored (support, query) pairs of earlier stages join every outer step, in stage proportions and
prioritized by their outer loss.

The learner does not own the stage clock; the harness (:mod:`continual.sequence`) calls
:meth:`set_tasks` at every boundary of the curriculum, told or not.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any

import torch
from torch import Tensor

from curricula import BuiltCurriculum
from metarl.meta import MetaTrainer
from metarl.plugins import Plugin, PluginList, StageEnd
from metarl.ppo import PPOTrainer
from metarl.trajectory import Trajectory

from .adapt_on_drift import ActingPolicy
from .config import META_LEARNERS, SequenceConfig
from .distill import ReplayDistillation
from .drift import DriftMonitor, StreamDetector
from .meta_replay import MetaReplay
from .packnet import PackNet
from .plasticity import make_metrics, make_remedy
from .progressive import ProgressiveColumns, progressive_policy
from .regularizers import EWC, L2Anchor
from .replay import ReplayBuffer
from .reward_surprise import RewardSurprise
from .stage_tasks import StageEpisodes, StageFamily, StageTrials

__all__ = ["LEARNER_SCHEMA_VERSION", "ContinualLearner", "make_trainer"]

LEARNER_SCHEMA_VERSION = 2


def make_regularizer(config: SequenceConfig, policy: torch.nn.Module) -> Plugin | None:
    r = config.regularizer
    if r.kind == "none":
        return None
    if r.kind == "l2":
        return L2Anchor(r.strength)
    if r.kind == "ewc":
        return EWC(
            r.strength,
            decay=r.ewc_decay,
            fisher=r.fisher,
            fisher_samples=r.fisher_samples,
            fisher_batches=r.fisher_iterations,
        )
    if r.kind == "progressive":
        return ProgressiveColumns(policy)
    return PackNet(
        dict(policy.named_parameters()),
        prune_fraction=r.prune_fraction,
        retrain_fraction=r.retrain_fraction,
    )


def make_monitor(config: SequenceConfig) -> DriftMonitor | None:
    d = config.drift
    if not d.enabled:
        return None
    det_cfg = d.page_hinkley.detector_config() if d.detector == "page_hinkley" else d.adwin
    detector = StreamDetector(d.detector, det_cfg, scale=d.scale, name=d.stream)
    return DriftMonitor({d.stream: detector}, reset_all_on_detection=True)


def make_trainer(
    config: SequenceConfig,
    policy: torch.nn.Module,
    built: BuiltCurriculum,
    first_stage: list[str],
) -> PPOTrainer | MetaTrainer:
    """The trainer ``config.learner`` names, over a stage's tasks (no plugins yet; the learner
    adds them). PPO and RL² learn at a constant learning rate (a continual learner has no end to
    anneal to) and log this iteration's returns and the mean statistics of all minibatches."""
    if config.learner in META_LEARNERS:
        meta = dataclasses.replace(config.meta, algo=config.learner, seed=config.seed)
        return MetaTrainer(policy, StageFamily(built, first_stage), meta)
    ppo = dataclasses.replace(config.ppo, anneal_lr=False, seed=config.seed)
    if config.learner == "rl2":
        source = StageTrials(
            ppo.num_envs, config.episodes_per_trial, built.max_episode_steps, config.seed
        )
    else:
        source = StageEpisodes(ppo.num_envs, ppo.num_steps)
    source.fused_step = ppo.fused_step
    return PPOTrainer(policy, source, ppo, return_window=None, average_stats=True)


def meta_steps_per_iteration(trainer: MetaTrainer) -> int:
    """Env steps of one outer iteration: support, resampled supports and query."""
    c = trainer.config
    batches = 2 + (c.inner_steps - 1 if c.resample_support else 0)
    return batches * c.meta_batch_size * c.episodes_per_task * trainer.num_steps


class ContinualLearner:
    """A trainer through a sequence of stages, with the plugins of ``config`` (see the module
    docstring).

    Args:
        policy: the sequence policy (in_context for RL²); with regularizer.kind=progressive
            it becomes column 0 of a :class:`ssm.progressive.ProgressivePolicy` with one column
            per stage, and :attr:`policy` is that network.
        config: the run's :class:`SequenceConfig`.
        built: the built curriculum (its first stage's tasks until the first :meth:`set_tasks`).
        first_stage: the task entries of the first stage (default: the curriculum's first).
        extra_plugins: further :class:`metarl.plugins.Plugin` s, after the config's.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        config: SequenceConfig,
        built: BuiltCurriculum,
        first_stage: list[str] | None = None,
        extra_plugins: list[Plugin] = (),
    ):
        if (config.learner == "rl2") != bool(getattr(policy, "in_context", False)):
            raise ValueError("learner=rl2 needs an in_context policy, the others one that is not")
        if config.regularizer.kind == "progressive":  # one column per stage, column 0 = policy
            stages = len(built.curriculum.stages)
            policy = progressive_policy(policy, stages, config.regularizer.lateral_width)
        self.policy, self.config, self.built = policy, config, built
        first = list(first_stage or built.curriculum.stages[0].tasks)
        self.trainer = make_trainer(config, policy, built, first)
        self.generator = self.trainer.generator
        self.regularizer = make_regularizer(config, policy)
        self.replay: ReplayDistillation | MetaReplay | None = None
        rp = config.replay
        if rp.enabled and rp.kind == "meta":
            self.replay = MetaReplay(
                self.trainer.learner,
                self.generator,
                tasks=rp.meta_tasks,
                tasks_per_stage=rp.meta_tasks_per_stage,
                coef=rp.coef,
                current_fraction=rp.buffer.current_fraction,
                alpha=rp.buffer.alpha,
            )
        elif rp.enabled:
            self.replay = ReplayDistillation(
                ReplayBuffer(rp.buffer),
                policy,
                self.generator,
                batch_size=rp.batch_size,
                coef=rp.coef,
                policy_loss=rp.policy_loss,
                value_coef=rp.value_coef,
                steps_per_stage=rp.steps_per_stage,
                relabel=rp.relabel,
            )
        # the remedy before the metrics: their stage-start snapshot follows its stage-end change
        pl = config.plasticity
        self.remedy = make_remedy(pl, policy, config.seed, lambda: self.trainer.optimizer)
        self.plasticity_metrics = make_metrics(pl, policy)
        self.plugins = PluginList(
            [p for p in (self.regularizer, self.replay) if p is not None]
            + [p for p in (self.remedy, self.plasticity_metrics) if p is not None]
            + list(extra_plugins)
        )
        self.trainer.plugins = self.plugins
        if isinstance(self.trainer, MetaTrainer):
            self.steps_per_iteration = meta_steps_per_iteration(self.trainer)
        else:
            self.steps_per_iteration = self.trainer.source.steps_per_iteration
        self.monitor = make_monitor(config)
        d = config.drift
        self.reward_model: RewardSurprise | None = None
        if d.enabled and d.stream == "reward_surprise":
            self.reward_model = RewardSurprise(
                built.observation_space,
                built.action_space,
                features=d.reward_features,
                forget=d.reward_forget,
            )
        self.acting: ActingPolicy | None = None
        if isinstance(self.trainer, MetaTrainer) and config.drift.enabled:
            d = config.drift
            self.acting = ActingPolicy(
                d.adapt_on_drift, d.adapt_iterations, d.acting_tasks, readapt=d.readapt
            )
        self.stage = 0  # the learner's own stage: the known stage, or detections so far
        self.stage_iteration = 0
        self.detections: list[dict[str, Any]] = []
        self._stream_previous: float | None = None  # the stream's last value (transforms)
        self.recent: deque[Trajectory] = deque(maxlen=self._pending_len())
        # parameters at the start of the last iterations, for a detection that ends the stage
        # `discard_recent` iterations back
        keep = config.drift.discard_recent if config.boundaries == "hidden" else 0
        self._snapshots: deque[dict[str, Tensor]] = deque(maxlen=max(keep, 1))
        self._keep_snapshots = keep > 0

    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    @property
    def global_step(self) -> int:
        return self.trainer.global_step

    @property
    def buffer(self) -> ReplayBuffer | None:
        """The chunk replay buffer (None without it)."""
        return getattr(self.replay, "buffer", None)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer

    def _pending_len(self) -> int:
        """Iterations of data kept for consolidation: the EWC Fisher's and the replay's share,
        plus the iterations a detection discards."""
        n = self.config.regularizer.fisher_iterations
        if self.replay is not None:
            n = max(n, math.ceil(self.config.replay.steps_per_stage / self.steps_per_iteration))
        return n + self.config.drift.discard_recent

    def reset_optimizer(self) -> None:
        """Clear the optimiser's moments (a new stage may want a fresh start)."""
        if isinstance(self.trainer, MetaTrainer):
            self.trainer.reset_optimizer()
        else:
            self.trainer.optimizer = self.trainer.new_optimizer()

    # -- tasks ----------------------------------------------------------------------------------
    def set_tasks(self, names: list[str], seed: int, asynchronous: bool = False) -> None:
        """Learn on the task entries ``names`` from now on (the harness switches at the
        curriculum's stage boundaries, whether or not the learner is told): PPO and RL² act in a
        fresh vector env over them, seeded ``seed``; a meta-learner samples its meta-batches
        from them."""
        if isinstance(self.trainer, MetaTrainer):
            self.trainer.set_family(StageFamily(self.built, names))
            return
        assignments = self.built.assignments(names, self.config.ppo.num_envs)
        envs = self.built.vector_env(assignments, seed=seed, asynchronous=asynchronous)
        self.trainer.source.switch(envs, self.built.task_ids(assignments), seed)

    def close(self) -> None:
        self.trainer.close()

    # -- one iteration --------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """The trainer's iteration with the plugins, then the drift check; returns the log row."""
        if self._keep_snapshots:
            self._snapshots.append(
                {n: p.detach().clone() for n, p in self.policy.named_parameters()}
            )
        row = self.trainer.step().as_dict()
        row.pop("global_step", None)
        self.stage_iteration += 1
        self.recent.append(self.trainer.last_batch)
        row = {"iteration": row.pop("iteration"), "learner_stage": self.stage, **row}
        if self.reward_model is not None:
            fresh = [self.trainer.last_batch]  # PPO, RL²: the rollout; meta: support and query
            if getattr(self.trainer, "last_query", None) is not None:
                fresh.append(self.trainer.last_query)
            row["reward_surprise"] = self.reward_model.update(fresh)
        row["detection"] = self.observe(row)
        if self.acting is not None:
            row.update(self.acting.step(self.trainer, row["detection"]))
        return row

    # -- drift ----------------------------------------------------------------------------------
    def _stream_value(self, row: dict[str, Any]) -> float:
        stream = self.config.drift.stream
        if stream == "return":
            # NaN when no episode ended in this iteration; a meta-learner's: before adaptation
            return row.get("episodic_return", row.get("pre_return", math.nan))
        if stream == "value_loss":
            return row["value_loss"]
        if stream == "reward_surprise":
            return row["reward_surprise"]
        if stream == "log_value_loss":
            return math.log(max(row["value_loss"], 1e-12))
        # critic surprise; explained variance is NaN where the returns do not vary
        return math.log(max(row["value_loss"], 1e-12)) - max(row["explained_variance"], -5.0)

    def observe(self, row: dict[str, Any]) -> bool:
        """Feed an iteration's log row to the drift stream; True on a detection, which with
        hidden boundaries ends the learner's stage (:meth:`end_stage`)."""
        if self.monitor is None:
            return False
        stream = self.config.drift.stream
        value = self._stream_value(row)
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
        if self.reward_model is not None:  # a new distribution: the reward model starts over
            self.reward_model.reset()
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
            self.plugins.start_stage()
            if self.config.drift.reset_optimizer:
                self.reset_optimizer()
        return True

    # -- stage ends -----------------------------------------------------------------------------
    def end_stage(self, discard_recent: int = 0) -> None:
        """Close the learner's current stage: every plugin's ``end_stage`` (regularisers
        consolidate on the stage's last batches, replay stores its newest sequences), then open
        the next stage. The last ``discard_recent`` iterations (collected after an undetected
        switch) are left out, and the stage's final parameters are those from before them: the
        anchor and the replay targets are the policy the stage ended with, not one that has
        already begun to learn the next task."""
        data = list(self.recent)
        discarded: list[Trajectory] = []
        params = dict(self.policy.named_parameters())
        if discard_recent:
            cut = max(0, len(data) - discard_recent)
            data, discarded = data[:cut], data[cut:]
            if len(self._snapshots) >= discard_recent:
                params = dict(self._snapshots[-discard_recent])
        end = StageEnd(
            stage=self.stage,
            params=params,
            policy=self.policy,
            data=data,
            generator=self.generator,
            discarded=discarded,
        )
        self.plugins.end_stage(end)
        self.stage += 1
        self.stage_iteration = 0
        self.recent.clear()
        self._snapshots.clear()

    def start_stage(self) -> None:
        """A known boundary: after :meth:`end_stage` and the ended stage's evaluation, the
        plugins' ``start_stage`` (resets, shrink & perturb), then optionally clear the optimiser's
        moments."""
        self.plugins.start_stage()
        if self.config.reset_optimizer:
            self.reset_optimizer()

    def stage_progress(self, stage_iteration: int, stage_iterations: int) -> None:
        """Before an iteration of a stage of known length (PackNet prunes on its schedule)."""
        self.plugins.stage_progress(
            stage_iteration, stage_iterations, dict(self.policy.named_parameters())
        )

    # -- evaluation -----------------------------------------------------------------------------
    def evaluation_groups(self, stages: int) -> dict[tuple, list[int]]:
        """Stages that are evaluated with the same parameters, by group key."""
        groups: dict[tuple, list[int]] = {}
        for j in range(stages):
            groups.setdefault(self.plugins.evaluation_group(j), []).append(j)
        return groups

    def evaluation_params(self, group: tuple) -> dict[str, Tensor] | None:
        """The parameters to evaluate a group's stages with; None: the policy as it is."""
        return self.plugins.evaluation_params(dict(self.policy.named_parameters()), group)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run, as tensors and plain data (weights_only)."""
        return {
            "schema_version": LEARNER_SCHEMA_VERSION,
            "trainer": self.trainer.state_dict(),
            "stage": self.stage,
            "stage_iteration": self.stage_iteration,
            "detections": [dict(d) for d in self.detections],
            "recent": [t.as_dict() for t in self.recent],
            "regularizer": None if self.regularizer is None else self.regularizer.state_dict(),
            "replay": None if self.replay is None else self.replay.state_dict(),
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
            "stream_previous": self._stream_previous,
            "reward_model": None if self.reward_model is None else self.reward_model.state_dict(),
            "snapshots": [dict(p) for p in self._snapshots],
            "acting": None if self.acting is None else self.acting.state_dict(),
            "remedy": None if self.remedy is None else self.remedy.state_dict(),
            "plasticity_metrics": (
                None if self.plasticity_metrics is None else self.plasticity_metrics.state_dict()
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("schema_version") != LEARNER_SCHEMA_VERSION:
            raise ValueError(
                f"learner state schema_version {state.get('schema_version')} is not supported "
                f"(this code reads {LEARNER_SCHEMA_VERSION})"
            )
        self.trainer.load_state_dict(state["trainer"])
        self.stage, self.stage_iteration = int(state["stage"]), int(state["stage_iteration"])
        self.detections = [dict(d) for d in state["detections"]]
        self._stream_previous = state["stream_previous"]
        self._snapshots = deque(
            ({n: t.clone() for n, t in p.items()} for p in state["snapshots"]),
            maxlen=self._snapshots.maxlen,
        )
        self.recent = deque((Trajectory(**t) for t in state["recent"]), maxlen=self.recent.maxlen)
        plugins = ("regularizer", "replay", "monitor", "acting", "remedy", "plasticity_metrics")
        for name in (*plugins, "reward_model"):
            mine, saved = getattr(self, name), state.get(name)
            if (mine is None) != (saved is None):
                raise ValueError(f"the checkpoint's {name} plugin does not match the config's")
            if mine is not None:
                mine.load_state_dict(saved)
