"""Running a continual learner through a curriculum: a config in, a run directory out.

:class:`SequenceRun` owns the curriculum's clock: at every stage boundary it switches the
learner's tasks to the next stage's (the learner is told only when ``boundaries: known``), it
evaluates every
stage's tasks at the run's start, every ``eval.every_iterations`` within each stage and at each
stage's end (curves ``p_j(t)``; the end-of-stage rows give ``R[i, j]``), and it scores the drift
detector against the true switches. Run directory (:class:`metarl.run_dir.RunDir`)::

    config.yaml, meta.json        the config snapshot and provenance
    curriculum.yaml               a copy of the curriculum file, when the config names a file
    metrics.jsonl                 one row per iteration (PPO and plugin diagnostics), one per eval
    results.json                  R, curves, eval steps, detections, metrics (CW + detection)
    metrics.md                    the metrics table
    plots/R.png, plots/curves.png R heatmap, per-task curves with the stage boundaries
    reference.json                single-task reference curves (reference.mode=run)
    checkpoints/                  learner (params, Adam, generator, regulariser, replay buffer,
                                  drift detector, pending data), harness state, global RNGs
    status.json                   running / stopped / interrupted / finished / diverged

The loop, checkpoints, status, stops and interrupts are the one harness's
(:func:`metarl.harness.run_loop`); :class:`SequenceRun` is the trainer it drives.

**Resume.** A checkpoint is written at every stage end and, with ``run.checkpoint_every``, every so
many iterations within a stage. Resuming from a stage-end checkpoint continues bit-for-bit on CPU
(the next stage starts fresh episodes with seeds that depend only on the stage). Resuming from a
mid-stage checkpoint restores everything but the episodes in progress (gymnasium envs cannot be
saved), which restart with a seed derived from the iteration: the run continues from the same
parameters and buffers but is not bit-identical to an uninterrupted one.

**Reference.** ``reference.mode=run`` trains each stage alone from scratch (same seed, policy,
PPO settings and budget, no plugins) and evaluates it on the same schedule; its curves give
forward transfer. They are cached in ``reference.path`` (keyed by everything that determines
them), so runs that share a seed and budget share one reference.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curricula import BuiltCurriculum, Curriculum, StageSchedule, load_curriculum
from metarl.cli_args import check_resume_overrides
from metarl.config import ConfigError, config_to_dict, dump_config, load_config
from metarl.harness import TrainingDiverged, restore, run_loop, seed_everything
from metarl.run_dir import RunDir
from metarl.skill_sink import skill_sink_opener
from metarl.tracking import Tracker
from ssm.policy import SequencePolicy
from ssm.util import legacy_stream_seed, write_atomic

from . import metrics as cw
from .adapt_on_drift import post_switch_returns
from .config import SequenceConfig
from .evaluation import SequenceEvaluator, adapted_scores
from .learner import ContinualLearner
from .report import metrics_table, write_outputs
from .skill_growth import SkillGrowth

log = logging.getLogger(__name__)

__all__ = [
    "STATUS_FILE",
    "SequenceDiverged",
    "SequenceResult",
    "SequenceRun",
    "build_policy",
    "metrics_table",
    "prepare_curriculum",
    "resume_sequence",
    "run_sequence",
]

STATUS_FILE = "status.json"
OBSERVATION_LAYOUT_FILE = "observation_layout.json"
"""the run's observation layout (see :meth:`SequenceRun.observation_layout`)"""
CURRICULUM_FILE = "curriculum.yaml"
REFERENCE_FILE = "reference.json"
HARNESS_SCHEMA_VERSION = 2


class SequenceDiverged(RuntimeError):
    """A loss became NaN or inf; the run stopped and its last good checkpoint was kept."""


@dataclass
class SequenceResult:
    """What a finished (or stopped) run produced."""

    status: str
    """finished or stopped"""
    summary: dict[str, Any]
    """the headline metrics (also in results.json)"""
    results: dict[str, Any]
    """everything in results.json"""
    run: RunDir | None
    """the run directory (None for in-memory runs, e.g. reference runs)"""


def prepare_curriculum(cfg: SequenceConfig) -> Curriculum:
    """The config's curriculum with its stage_steps / max_stages overrides applied."""
    curriculum = load_curriculum(cfg.curriculum)
    if cfg.max_stages is not None:
        curriculum = curriculum.first_stages(min(cfg.max_stages, len(curriculum.stages)))
    if cfg.stage_steps is not None:
        curriculum = curriculum.with_stage_steps(cfg.stage_steps)
    return curriculum


def build_policy(cfg: SequenceConfig, built: BuiltCurriculum) -> SequencePolicy:
    return cfg.policy.build(built.observation_space, built.action_space, cfg.learner == "rl2")


def _config(config: SequenceConfig | str | Path | None, overrides: Iterable[str]) -> SequenceConfig:
    if isinstance(config, SequenceConfig):
        if overrides:
            return load_config(SequenceConfig, config_to_dict(config), overrides)
        return config
    return load_config(SequenceConfig, config, overrides)


def stage_end_matrix(points: list[dict], stage_iterations: list[int], key: str) -> np.ndarray:
    """``R[i, j] = points[at the end of stage i][key][j]``: the evaluation at each stage's last
    iteration (a ValueError if a stage has none, or the rows do not form a square matrix)."""
    ends = {}
    for p in points:
        if p["stage_iteration"] == stage_iterations[p["stage"]] and key in p:
            ends[p["stage"]] = p[key]
    missing = [s for s in range(len(stage_iterations)) if s not in ends]
    if missing:
        raise ValueError(f"no end-of-stage evaluation with {key!r} for stages {missing}")
    return cw.check_performance_matrix([ends[s] for s in range(len(stage_iterations))])


def adapted_forward_transfer(R_adapt: np.ndarray, scratch: np.ndarray) -> tuple[float, list]:
    """Forward transfer of adaptation (GEM's forward transfer, Lopez-Paz & Ranzato 2017, on
    adapted scores): ``FT_j = R_adapt[j−1, j] − b_j`` for ``j = 1..N−1``, where ``b_j`` is stage
    j's adapted score from the untrained initialisation (``scratch``). Positive: meta-training on
    the earlier stages made a stage not yet seen quicker to adapt to. Returns ``(mean, FT_j)``
    (NaN and ``[]`` for a single stage)."""
    R = np.asarray(R_adapt, dtype=float)
    b = np.asarray(scratch, dtype=float).reshape(-1)
    n = R.shape[0]
    if R.shape != (n, n) or b.shape != (n,):
        raise ValueError(
            f"need a square R_adapt and one scratch score per stage, got {R.shape} and {b.shape}"
        )
    ft = [float(R[j - 1, j] - b[j]) for j in range(1, n)]
    return (float(np.mean(ft)) if ft else math.nan), ft


# --- entry points -----------------------------------------------------------------------------


def run_sequence(
    config: SequenceConfig | str | Path | None = None,
    overrides: Iterable[str] = (),
    run: RunDir | None = None,
    write: bool = True,
) -> SequenceResult:
    """Run a config (a :class:`SequenceConfig`, or a YAML path plus dotted ``overrides``) into a
    new run directory under ``run.root`` (``write=False``: in memory, nothing written). The
    curriculum is loaded and checked before the directory is created; a curriculum given as a
    file is copied into it (``curriculum.yaml``), and a resume reads that copy."""
    cfg = _config(config, overrides)
    curriculum = prepare_curriculum(cfg)
    if cfg.skills.library is not None:
        skill_sink_opener(cfg.skills.sink)  # no provider: a config error before anything is written
    try:  # everything is built (envs, policy, learner, plugins) before a directory exists
        sequence = SequenceRun(cfg, curriculum)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not write:
        return sequence.run_in_memory()
    if run is None:
        run = RunDir.create(cfg.run.root, cfg.run.name or curriculum.name, cfg, cfg.seed)
        sequence.cfg = _snapshot_curriculum(run, cfg)
    return sequence.run_in(run, resuming=False)


def resume_sequence(run_dir: str | Path, overrides: Iterable[str] = ()) -> SequenceResult:
    """Continue a run from its latest checkpoint (``overrides`` may change only ``run.*`` and
    ``logging.*``)."""
    run = RunDir.open(run_dir, expect="sequence")
    cfg = run.load_config(SequenceConfig, check_resume_overrides(overrides))
    if (run.path / CURRICULUM_FILE).is_file():  # the copy, wherever the run directory is now
        cfg = dataclasses.replace(cfg, curriculum=str(run.path / CURRICULUM_FILE))
    return SequenceRun(cfg, prepare_curriculum(cfg)).run_in(run, resuming=True)


def _snapshot_curriculum(run: RunDir, cfg: SequenceConfig) -> SequenceConfig:
    """A curriculum from a file is part of the experiment: copy it into the run directory and
    point the config snapshot at the copy, so editing the original cannot change a resume."""
    source = Path(cfg.curriculum)
    if not source.is_file():
        return cfg  # a shipped curriculum, by name
    copy_path = run.path / CURRICULUM_FILE
    write_atomic(copy_path, source.read_bytes())
    cfg = dataclasses.replace(cfg, curriculum=str(copy_path.resolve()))
    dump_config(cfg, run.config_path)
    return cfg


# --- the run ----------------------------------------------------------------------------------


class SequenceRun:
    """A continual run as a :class:`metarl.harness.Trainer`: one :meth:`step` is one iteration of
    the learner, plus the curriculum's clock around it (switching tasks at every boundary, ending
    the stage when boundaries are known, evaluating every stage's tasks on schedule). The one
    harness (:func:`metarl.harness.run_loop`) drives it: metrics, Tracker, checkpoints (every stage
    end, and every ``run.checkpoint_every`` iterations), status, stops and interrupts."""

    def __init__(
        self,
        cfg: SequenceConfig,
        curriculum: Curriculum,
        built: BuiltCurriculum | None = None,
    ):
        self.cfg, self.curriculum = cfg, curriculum
        self.built = built if built is not None else curriculum.build()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.seed)
        policy = build_policy(cfg, self.built)
        self.learner = ContinualLearner(policy, cfg, self.built, list(curriculum.stages[0].tasks))
        self.skill_growth: SkillGrowth | None = None
        if cfg.skills.library is not None:
            sink = skill_sink_opener(cfg.skills.sink)(cfg.skills.library)
            self.skill_growth = SkillGrowth(
                sink,
                self.learner.trainer,
                cfg.skills.tasks_per_stage,
                curriculum.stage_names,
                episodes=cfg.eval.adapt_episodes,
            )
            self.skill_growth.run_name = curriculum.name
            self.learner.plugins.append(self.skill_growth)
        self.schedule = StageSchedule.from_curriculum(curriculum, self.learner.steps_per_iteration)
        self.evaluator = SequenceEvaluator(
            self.built,
            cfg.eval.episodes,
            cfg.eval.seed,
            cfg.eval.deterministic,
            in_context=cfg.learner == "rl2",
            episodes_per_trial=cfg.episodes_per_trial,
            asynchronous=cfg.async_envs,
        )
        self._eval_policy: SequencePolicy | None = None
        self._finetuner = None
        self.h: dict[str, Any] = {"stage": 0, "stage_iteration": 0, "points": [], "elapsed": 0.0}
        self._started = time.perf_counter()
        self._tasks_of: int | None = None  # the stage whose tasks the learner has
        self._stage_ended = False
        self.iterations = self.schedule.total_iterations
        self.run: RunDir | None = None

    def _stage_seed(self, stage: int, iteration: int) -> int:
        return legacy_stream_seed(self.cfg.seed, 100_003 * (stage + 1) + iteration)

    def observation_layout(self) -> list[dict[str, Any]]:
        """What the policy's observation is made of, for agents outside the framework
        (``observation_layout.json``, read by ``metarl export-skills``): the family's observation,
        then, with ``task_id_obs``, the one-hot of the task entry (``index_of``: the entries in
        one-hot order)."""
        env_size = int(np.prod(self.built.family_observation_space.shape))
        layout: list[dict[str, Any]] = [{"name": "env", "size": env_size}]
        if self.curriculum.task_id_obs:
            names = list(self.curriculum.task_names)
            layout.append({"name": "task_onehot", "size": len(names), "index_of": names})
        return layout

    # -- the Trainer protocol -------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        return self.learner.iteration

    @property
    def policy(self) -> torch.nn.Module:
        """The learner's live policy (checkpoints record it for :func:`metarl.load`)."""
        return self.learner.policy

    @property
    def global_step(self) -> int:
        return self.learner.global_step

    @property
    def done(self) -> bool:
        return self.h["stage"] >= self.schedule.num_stages

    def step(self) -> list[dict[str, Any]]:
        """One iteration of the learner in the current stage; returns its row, then any
        evaluation rows (the first evaluation, before the first iteration, comes first)."""
        h, learner = self.h, self.learner
        rows: list[dict[str, Any]] = []
        if not h["points"]:
            rows.append(self._evaluate(0, 0))
        s = h["stage"]
        if self._tasks_of != s:
            seed = self._stage_seed(s, h["stage_iteration"])
            learner.set_tasks(list(self.curriculum.stages[s].tasks), seed, self.cfg.async_envs)
            self._tasks_of = s
        n = self.schedule.iterations[s]
        learner.stage_progress(h["stage_iteration"], n)
        row = learner.step()
        h["stage_iteration"] += 1
        if "acting_return" in row:  # a meta-learner's acting agent (drift detection on)
            h.setdefault("acting", []).append([row["iteration"], row["acting_return"]])
        rows.append({"global_step": learner.global_step, "stage": s, **row})
        last = h["stage_iteration"] == n
        known_end = last and self.cfg.boundaries == "known"
        if known_end:
            learner.end_stage()  # consolidate (EWC, PackNet's masks, replay), then score
        if last or h["stage_iteration"] % self.cfg.eval.every_iterations == 0:
            rows.append(self._evaluate(s, h["stage_iteration"]))
        if known_end:
            learner.start_stage()  # prepare the next stage (resets, shrink & perturb)
        self._stage_ended = last
        if last:
            h["stage"], h["stage_iteration"] = s + 1, 0
            log.info(
                "stage %d/%d (%s) done at step %d: scores %s",
                s + 1,
                self.schedule.num_stages,
                self.curriculum.stages[s].name,
                learner.global_step,
                np.round(h["points"][-1]["scores"], 3).tolist(),
            )
        return rows

    def checkpoint_due(self) -> bool:
        """Every stage end is checkpointed (a resume from there is bit-identical on CPU)."""
        return self._stage_ended

    def status_fields(self) -> dict[str, Any]:
        return {
            "stage": self.h["stage"],
            "stage_iteration": self.h["stage_iteration"],
            "stages": self.schedule.num_stages,
        }

    def state_dict(self) -> dict[str, Any]:
        self.h["elapsed"] = time.perf_counter() - self._started
        return {
            "schema_version": HARNESS_SCHEMA_VERSION,
            "learner": self.learner.state_dict(),
            "harness": dict(self.h),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("schema_version") != HARNESS_SCHEMA_VERSION:
            raise ValueError(
                f"checkpoint harness schema_version {state.get('schema_version')} is not "
                f"supported (this code reads {HARNESS_SCHEMA_VERSION})"
            )
        self.learner.load_state_dict(state["learner"])
        self.h = dict(state["harness"])
        self.h["points"] = list(self.h["points"])
        self._started = time.perf_counter() - self.h["elapsed"]
        self._tasks_of = None  # fresh episodes of the stage, seeded from the stage iteration

    def close(self) -> None:
        self.evaluator.close()
        self.learner.close()

    # -- running --------------------------------------------------------------------------------
    def run_in(self, run: RunDir, resuming: bool) -> SequenceResult:
        """Through the one harness, into ``run``."""
        self.run = run
        if self.skill_growth is not None:
            self.skill_growth.run_name = run.path.name
        if resuming:
            restore(run, self)
        else:
            write_atomic(
                run.path / OBSERVATION_LAYOUT_FILE,
                (json.dumps(self.observation_layout(), indent=1) + "\n").encode(),
            )
        tracker = Tracker(
            run,
            self.cfg.logging,
            self.iterations,
            self.iteration,
            run_config=self.cfg,
            resume=resuming,
        )
        result: list[SequenceResult] = []

        def finish() -> None:
            self.h["elapsed"] = time.perf_counter() - self._started
            result.append(self._finish("finished"))

        try:
            status = run_loop(run, self, self.cfg.run, tracker, finish)
        except TrainingDiverged as e:
            raise SequenceDiverged(str(e)) from e
        return result[0] if result else self._finish(status)

    def run_in_memory(self) -> SequenceResult:
        """The whole sequence with nothing written (reference runs, quick experiments)."""
        try:
            while not self.done:
                self.step()
            self.h["elapsed"] = time.perf_counter() - self._started
            return self._finish("finished")
        finally:
            self.close()

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, stage: int, stage_iteration: int) -> dict[str, Any]:
        """Score every stage's tasks now; append a point; return its log row."""
        learner, stages = self.learner, self.curriculum.stages
        scores = [math.nan] * len(stages)
        tasks: dict[str, dict] = {}
        for group, cols in learner.evaluation_groups(len(stages)).items():
            params = learner.evaluation_params(group)
            policy = learner.policy if params is None else self._policy_with(params)
            names = [t for j in cols for t in stages[j].eval_tasks]
            out = self.evaluator.evaluate(policy, names)
            for j in cols:
                scores[j] = float(np.mean([out[t]["score"] for t in stages[j].eval_tasks]))
            tasks.update(out)
        point = {
            "step": learner.global_step,
            "iteration": learner.iteration,
            "stage": stage,
            "stage_iteration": stage_iteration,
            "scores": scores,
            "tasks": tasks,
        }
        row = {f"eval/{st.name}": v for st, v in zip(stages, scores)}
        at_end = stage_iteration == self.schedule.iterations[stage]
        if self.meta_learner is not None and (at_end or stage_iteration == 0):
            pre, adapted = self._evaluate_adapted()
            point.update(pre_scores=pre, adapted_scores=adapted)
            row.update({f"eval_adapt/{st.name}": v for st, v in zip(stages, adapted)})
            row["eval_adapt/average"] = float(np.mean(adapted))
        self.h["points"].append(point)
        return {
            "global_step": learner.global_step,
            "kind": "eval",
            "stage": stage,
            **row,
            "eval/average": float(np.mean(scores)),
        }

    @property
    def meta_learner(self):
        """What adapts θ in the adapted evaluation: the meta-learner's own learner; for PPO with
        ``eval.adapt_steps`` set, plain fine-tuning (SGD on the VPG surrogate at
        ``meta.inner_lr``, :func:`metarl.meta.finetune_learner`: the non-meta baseline); None for
        RL² and for PPO without it."""
        own = getattr(self.learner.trainer, "learner", None)
        if own is not None:
            return own
        if self.cfg.learner == "ppo" and self.cfg.eval.adapt_steps:
            if self._finetuner is None:
                from metarl.meta import finetune_learner

                self._finetuner = finetune_learner(self.learner.policy, self.cfg.meta)
            return self._finetuner
        return None

    def _evaluate_adapted(self) -> tuple[list[float], list[float]]:
        """Every stage's score before and after ``eval.adapt_steps`` inner steps from θ (a
        meta-learner's R_pre and R_adapt rows; :func:`continual.evaluation.adapted_scores`)."""
        cfg, trainer = self.cfg, self.learner.trainer
        steps = cfg.meta.inner_steps if cfg.eval.adapt_steps is None else cfg.eval.adapt_steps
        num_steps = getattr(trainer, "num_steps", None) or self.built.max_episode_steps
        stages = self.curriculum.stages
        pre, adapted = [math.nan] * len(stages), [math.nan] * len(stages)
        for group, cols in self.learner.evaluation_groups(len(stages)).items():
            # adapt from the parameters the group is scored with (PackNet: the stage's masks;
            # progressive columns: the stage's column), as the greedy evaluation does
            with self._live_params(self.learner.evaluation_params(group)):
                for j in cols:
                    pre[j], adapted[j] = adapted_scores(
                        self.built,
                        self.meta_learner,
                        list(stages[j].eval_tasks),
                        steps,
                        cfg.eval.adapt_episodes,
                        cfg.eval.seed,
                        num_steps,
                    )
        return pre, adapted

    @contextlib.contextmanager
    def _live_params(self, params: dict[str, torch.Tensor] | None):
        """The live policy with ``params`` (parameters and buffers) in place, restored exactly
        afterwards; nothing changes for ``None``."""
        if params is None:
            yield
            return
        policy = self.learner.policy
        tensors = dict(policy.named_parameters())
        tensors.update(policy.named_buffers())
        saved = {n: t.detach().clone() for n, t in tensors.items() if n in params}
        with torch.no_grad():
            for n in saved:
                tensors[n].copy_(params[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    tensors[n].copy_(value)

    def _policy_with(self, params: dict[str, torch.Tensor]) -> SequencePolicy:
        if self._eval_policy is None:
            self._eval_policy = copy.deepcopy(self.learner.policy)
        with torch.no_grad():
            for name, p in self._eval_policy.named_parameters():
                p.copy_(params[name])
            for name, b in self._eval_policy.named_buffers():
                if name in params:  # a plugin may set buffers too (progressive: the column)
                    b.copy_(params[name])
        return self._eval_policy

    # -- results --------------------------------------------------------------------------------
    def _finish(self, status: str) -> SequenceResult:
        cfg, schedule, points = self.cfg, self.schedule, self.h["points"]
        names = self.curriculum.stage_names
        n_done = self.h["stage"]
        results: dict[str, Any] = {
            "curriculum": self.curriculum.name,
            "stages": names,
            "stage_tasks": [list(s.tasks) for s in self.curriculum.stages],
            "stage_eval_tasks": [list(s.eval_tasks) for s in self.curriculum.stages],
            "stage_iterations": list(schedule.iterations),
            "steps_per_iteration": schedule.steps_per_iteration,
            "boundaries": schedule.boundaries,
            "boundaries_mode": cfg.boundaries,
            "eval_steps": [p["step"] for p in points],
            "curves": np.array([p["scores"] for p in points]).T.tolist(),
            "points": points,
            "detections": list(self.learner.detections),
            "learner_stages": self.learner.stage + (0 if cfg.boundaries == "known" else 1),
            "wall_time_s": self.h["elapsed"],
            "skills": [] if self.skill_growth is None else list(self.skill_growth.added),
            "global_step": self.learner.global_step,
            "status": status,
        }
        if self.learner.plasticity_metrics is not None:  # per stage: mean and last measurement
            results["plasticity"] = self.learner.plasticity_metrics.summary()
        summary: dict[str, Any] = {"stages_done": n_done, "global_step": self.learner.global_step}
        if status == "finished":
            R = self._performance_matrix()
            results["R"] = R.tolist()
            F, F_i = cw.forgetting(R)
            summary.update(
                average_performance=cw.average_performance(R),
                forgetting=F,
                forgetting_per_stage=F_i.tolist(),
            )
            if self.meta_learner is not None:
                summary.update(self._adaptation_summary(results))
            if self.h.get("acting"):
                results["acting"] = self._acting_report()
                summary["post_switch_acting_return"] = results["acting"]["mean"]
            reference = self._reference()
            if reference is not None:
                mine = [self.stage_curve(i) for i in range(len(names))]
                ft, ft_i = cw.forward_transfer(
                    [c[1] for c in mine], [r["scores"] for r in reference], [c[0] for c in mine]
                )
                summary.update(forward_transfer=ft, forward_transfer_per_stage=ft_i.tolist())
                results["reference"] = reference
            if cfg.drift.enabled:
                summary["detection"] = self._detection_summary()
        results["summary"] = summary
        if self.run is not None and status == "finished":
            write_outputs(self.run, results, self.curriculum.name)
        return SequenceResult(status, summary, results, self.run)

    def _performance_matrix(self, key: str = "scores") -> np.ndarray:
        """``R[i, j]``: the score on stage j's tasks at the end of stage i (``key``: ``scores``,
        greedy θ; a meta-learner's ``pre_scores`` / ``adapted_scores``: R_pre, R_adapt)."""
        return stage_end_matrix(self.h["points"], self.schedule.iterations, key)

    def _adaptation_summary(self, results: dict[str, Any]) -> dict[str, Any]:
        """A meta-learner judged by how well it still adapts: R_pre and R_adapt (into
        ``results``), average adapted performance, adapted forgetting and the adaptation gain."""
        R_pre = self._performance_matrix("pre_scores")
        R_adapt = self._performance_matrix("adapted_scores")
        results["R_pre"], results["R_adapt"] = R_pre.tolist(), R_adapt.tolist()
        F, F_i = cw.forgetting(R_adapt)
        # the first evaluation adapts the untrained initialisation: adaptation from scratch
        first = next((p for p in self.h["points"] if "adapted_scores" in p), None)
        scratch = None if first is None else np.asarray(first["adapted_scores"], dtype=float)
        FT, FT_j = (math.nan, []) if scratch is None else adapted_forward_transfer(R_adapt, scratch)
        return {
            "average_adapted_performance": cw.average_performance(R_adapt),
            "adapted_forgetting": F,
            "adapted_forgetting_per_stage": F_i.tolist(),
            "adaptation_gain": float(np.mean(R_adapt[-1] - R_pre[-1])),
            "adapted_forward_transfer": FT,
            "adapted_forward_transfer_per_stage": list(FT_j),
            "scratch_adapted_performance": (
                float(np.mean(scratch)) if scratch is not None else math.nan
            ),
        }

    def _acting_report(self) -> dict[str, Any]:
        """The acting agent's return over the ``drift.adapt_iterations`` iterations after each
        true switch (with or without adapt-on-drift, as configured)."""
        window = self.cfg.drift.adapt_iterations
        rows = [{"iteration": i, "acting_return": v} for i, v in self.h["acting"]]
        switches = [self.schedule.start_iteration(s) for s in range(1, self.schedule.num_stages)]
        per_switch = post_switch_returns(rows, switches, window)
        return {
            "adapt_on_drift": self.cfg.drift.adapt_on_drift,
            "window_iterations": window,
            "switch_iterations": switches,
            "post_switch_returns": per_switch,
            "mean": float(np.nanmean(per_switch)) if per_switch else math.nan,
            "acting_returns": self.h["acting"],
        }

    def stage_curve(self, stage: int) -> tuple[list[int], list[float]]:
        """Stage ``stage``'s score during its own stage: ``(steps since the stage began,
        scores)``, from the evaluation at its start to the one at its end."""
        points = self.h["points"]
        start = self.schedule.start_step(stage)
        if stage == 0:
            first = [p for p in points if p["stage"] == 0 and p["stage_iteration"] == 0]
        else:
            end_prev = self.schedule.iterations[stage - 1]
            first = [
                p for p in points if p["stage"] == stage - 1 and p["stage_iteration"] == end_prev
            ]
        inside = [p for p in points if p["stage"] == stage and p["stage_iteration"] > 0]
        chosen = first[:1] + inside
        return [p["step"] - start for p in chosen], [p["scores"][stage] for p in chosen]

    def _detection_summary(self) -> dict[str, Any]:
        spi = self.schedule.steps_per_iteration
        boundaries = self.schedule.boundaries
        steps = [d["step"] for d in self.learner.detections]
        max_delay = self.cfg.drift.max_delay_iterations
        scores = cw.detection_scores(
            boundaries, steps, max_delay=None if max_delay is None else max_delay * spi
        )
        found = len(boundaries) - scores.missed
        return {
            "switches": len(boundaries),
            "detected": found,
            "detection_rate": found / len(boundaries) if boundaries else math.nan,
            "delays_steps": scores.delays,
            "mean_delay_steps": scores.mean_delay,
            "mean_delay_iterations": scores.mean_delay / spi,
            "false_alarms": scores.false_alarms,
            "false_alarms_per_1M_steps": scores.false_alarms / self.schedule.total_steps * 1e6,
            "detection_steps": steps,
        }

    # -- reference ------------------------------------------------------------------------------
    def _reference(self) -> list[dict] | None:
        ref = self.cfg.reference
        if ref.mode == "none":
            return None
        if ref.mode == "file":
            data = json.loads(Path(ref.path).read_text())
            by_name = {r["stage"]: r for r in data["stages"]}
            out = []
            for i, name in enumerate(self.curriculum.stage_names):
                if name not in by_name:
                    raise ValueError(f"reference file {ref.path} has no curve for stage {name!r}")
                r = by_name[name]
                if r["steps"] != self.stage_curve(i)[0]:
                    raise ValueError(
                        f"reference curve of {name!r} was evaluated at steps {r['steps']}, this "
                        f"run at {self.stage_curve(i)[0]}: budgets or eval schedules differ"
                    )
                out.append(r)
            return out
        out = [self._reference_stage(i) for i in range(len(self.curriculum.stages))]
        if self.run is not None:
            body = json.dumps({"stages": out}, indent=1) + "\n"
            write_atomic(self.run.path / REFERENCE_FILE, body.encode())
        return out

    def _reference_key(self, stage: int) -> str:
        c = self.cfg
        stage_def = self.curriculum.stages[stage]
        material = {
            "tasks": [dataclasses.asdict(t) for t in self.curriculum.tasks],
            "task_id_obs": self.curriculum.task_id_obs,
            "stage_tasks": list(stage_def.tasks),
            **({"stage_eval": list(stage_def.eval)} if stage_def.eval else {}),
            "iterations": self.schedule.iterations[stage],
            "seed": c.seed,
            "algo": c.learner,  # (the key's old name keeps reference caches valid)
            "episodes_per_trial": c.episodes_per_trial,
            "policy": config_to_dict(c.policy),
            "ppo": config_to_dict(c.ppo),
            "eval": config_to_dict(c.eval),
        }
        text = json.dumps(material, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _reference_stage(self, stage: int) -> dict:
        key = self._reference_key(stage)
        cache_path = Path(self.cfg.reference.path) if self.cfg.reference.path else None
        cache = {}
        if cache_path is not None and cache_path.is_file():
            cache = json.loads(cache_path.read_text())
        name = self.curriculum.stages[stage].name
        if key in cache:
            return {**cache[key], "stage": name}
        log.info("reference run for stage %d (%s)", stage, name)
        sub_cfg = dataclasses.replace(
            self.cfg,
            regularizer=dataclasses.replace(self.cfg.regularizer, kind="none"),
            replay=dataclasses.replace(self.cfg.replay, enabled=False),
            drift=dataclasses.replace(self.cfg.drift, enabled=False),
            boundaries="known",
            reference=dataclasses.replace(self.cfg.reference, mode="none"),
            run=dataclasses.replace(self.cfg.run, stop_after=None),
        )
        sub = SequenceRun(sub_cfg, self.curriculum.only_stage(stage), built=self.built)
        sub.run_in_memory()
        steps, scores = sub.stage_curve(0)
        entry = {"stage": name, "steps": steps, "scores": scores}
        if cache_path is not None:  # re-read: another run may have added entries meanwhile
            fresh = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
            fresh[key] = {"steps": steps, "scores": scores}
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache_path, (json.dumps(fresh, indent=1) + "\n").encode())
        return entry
