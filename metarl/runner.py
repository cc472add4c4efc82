"""The experiment runner: a config in, a run directory out (train, resume).

``metarl train CONFIG [key=value ...]`` and ``metarl resume RUN_DIR`` are thin wrappers over
:func:`train` and :func:`resume`; ``metarl eval`` over :func:`metarl.evaluation.evaluate` and
``metarl adapt-eval`` over :func:`metarl.few_shot.adapt_evaluate`. The multi-task PPO baseline
of a meta run is trained here too (:func:`find_or_train_multitask`).
Three algorithms: ``rl2`` (in-context meta-RL), ``ppo`` (multi-task PPO) and ``maml`` (gradient
meta-RL; ``meta.algo`` picks MAML, FOMAML, iMAML or Reptile).

A run is a function of its config and its one seed: the global RNGs are seeded from it, the
trainer draws tasks and env seeds from ``(seed, iteration)`` and samples actions from one
generator. The loop, the checkpoints, ``status.json``, stops and interrupts are the one harness's
(:mod:`metarl.harness`): a checkpoint, written atomically every ``run.checkpoint_every``
iterations and whenever a run stops, holds the trainer's state (parameters, optimiser, generator,
counters) and the global RNG states; :func:`resume` restores them, drops the metrics rows logged
after the checkpoint and continues.
For RL² and the gradient meta-learners a resumed run ends with the same metrics as an
uninterrupted one on CPU (tested; for RL² including a SIGKILL).

A non-finite loss raises :class:`TrainingDiverged`, naming the quantity; nothing is checkpointed
after the last finite iteration, so the last good checkpoint stays the newest one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ssm.policy import SequencePolicy

from .backends import make_collector, require_ray
from .config import ConfigError, config_to_dict, load_config
from .evaluation import evaluate
from .harness import (
    STATUS_FILE,
    TrainingDiverged,
    check_resume_overrides,
    restore,
    run_loop,
    seed_everything,
)
from .meta import MetaTrainer
from .ppo import PPOConfig, PPOTrainer
from .rl2 import RL2Trainer
from .run_dir import RunDir
from .tasks import TaskFamily
from .tracking import LoggingConfig, Tracker
from .train_config import (
    EvalConfig,
    PolicyConfig,
    RunConfig,
    TrainConfig,
    build_family,
    build_policy,
)

log = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "PolicyConfig",
    "RunConfig",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "find_or_train_multitask",
    "resume",
    "train",
]


# --- building blocks --------------------------------------------------------------------------


def check_backend(cfg: TrainConfig) -> None:
    """A ``ConfigError`` (before anything is written) for a backend this run cannot use."""
    if cfg.backend == "local":
        return
    if cfg.algo == "ppo":
        raise ConfigError(
            f"backend={cfg.backend!r} serves algo rl2 and maml (a fresh task batch every "
            "iteration); algo ppo keeps its episodes running in one local vector env: use "
            "backend=local"
        )
    try:
        cfg.ray.check()
        require_ray()
    except (ImportError, ValueError) as e:
        raise ConfigError(str(e)) from e


def build_trainer(cfg: TrainConfig, policy: SequencePolicy, family: TaskFamily):
    check_backend(cfg)
    if cfg.algo == "rl2":
        collector = make_collector(cfg.backend, policy, family, cfg.ray)
        return RL2Trainer(policy, family, dataclasses.replace(cfg.rl2, seed=cfg.seed), collector)
    if cfg.algo == "maml":
        meta = dataclasses.replace(cfg.meta, seed=cfg.seed)
        collector = make_collector(cfg.backend, policy, family, cfg.ray, meta.vectorize, meta)
        return MetaTrainer(policy, family, meta, collector)
    ppo = dataclasses.replace(cfg.ppo, seed=cfg.seed)
    tasks = family.sample(ppo.num_envs, split="train", seed=cfg.seed)
    return PPOTrainer(policy, family.make_vector_env(tasks, seed=cfg.seed), ppo)


# --- train / resume ---------------------------------------------------------------------------


def train(
    config: TrainConfig | str | Path,
    overrides: Iterable[str] = (),
    run: RunDir | None = None,
) -> RunDir:
    """Train from a config (a ``TrainConfig`` or a YAML path plus dotted ``overrides``) into a new
    run directory under ``config.run.root``; returns it."""
    cfg = config if isinstance(config, TrainConfig) else load_config(TrainConfig, config, overrides)
    preflight(cfg)
    if run is None:
        run = RunDir.create(cfg.run.root, cfg.run.name, cfg, cfg.seed)
    return _run(cfg, run, resuming=False)


def preflight(cfg: TrainConfig) -> None:
    """Everything about ``cfg`` that can be checked without training, before a run directory
    exists: the backend, the family and its keyword arguments, the policy's layer settings and
    the trainer's batch shape. Raises ``ConfigError`` with one line."""
    check_backend(cfg)
    try:
        family = build_family(cfg)
        with torch.random.fork_rng(devices=[]):  # a trial build; the run builds its own
            build_policy(cfg, family)
        if cfg.algo in ("ppo", "rl2"):
            ppo = cfg.ppo if cfg.algo == "ppo" else cfg.rl2
            if ppo.num_envs % ppo.num_minibatches:
                raise ValueError(
                    f"{cfg.algo}.num_minibatches ({ppo.num_minibatches}) must divide "
                    f"{cfg.algo}.num_envs ({ppo.num_envs}): minibatches are whole sequences"
                )
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e


def resume(run_dir: str | Path, overrides: Iterable[str] = ()) -> RunDir:
    """Continue a run from its latest readable checkpoint (``overrides`` may change only
    ``run.*`` and ``logging.*`` settings, e.g. ``run.stop_after=null``)."""
    run = RunDir.open(run_dir, expect="train")
    cfg = run.load_config(TrainConfig, check_resume_overrides(overrides))
    return _run(cfg, run, resuming=True)


def _run(cfg: TrainConfig, run: RunDir, resuming: bool) -> RunDir:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.seed)
    family = build_family(cfg)
    policy = build_policy(cfg, family)
    trainer = build_trainer(cfg, policy, family)
    if resuming:
        restore(run, trainer)
    logging_cfg = cfg.logging
    if cfg.algo == "maml" and logging_cfg.headline == LoggingConfig().headline:
        logging_cfg = dataclasses.replace(logging_cfg, headline=("pre_return", "post_return", "kl"))
    tracker = Tracker(
        run, logging_cfg, trainer.iterations, trainer.iteration, run_config=cfg, resume=resuming
    )

    def finish() -> None:
        run.plot_metrics(_plot_keys(run), "training.png")
        results = evaluate(run, cfg=cfg, policy=policy, family=family)
        tracker.summary(results["headline"])

    run_loop(run, trainer, cfg.run, tracker, finish)
    return run


def _plot_keys(run: RunDir) -> list[str]:
    wanted = ["episodic_return", "value_loss", "entropy", "approx_kl", "explained_variance"]
    wanted += ["pre_return", "post_return", "post_success", "outer_loss", "kl", "grad_norm"]
    rows = run.read_metrics()

    def plottable(key: str) -> bool:  # logged, and finite somewhere (maml logs NaN for n/a)
        return any(
            isinstance(v, int | float) and math.isfinite(v)
            for r in rows
            if (v := r.get(key)) is not None
        )

    return [k for k in wanted if plottable(k)]


def _experiment(cfg: TrainConfig) -> dict:
    """What defines a run's result: the config without its run.* and logging.* settings."""
    d = config_to_dict(cfg)
    return {k: v for k, v in d.items() if k not in ("run", "logging")}


def multitask_config(
    cfg: TrainConfig, total_steps: int, root: str | Path, ppo: dict[str, Any] | None = None
) -> TrainConfig:
    """The multi-task PPO baseline of a meta run: the same family, seed and policy (not
    in-context), trained on the train tasks (one per env) for ``total_steps`` env steps.

    Envs: one per support trajectory of a meta-batch for maml runs (meta_batch_size x
    episodes_per_task), ``rl2.num_envs`` for rl2 runs; one episode per env per iteration.
    ``ppo`` overrides any PPOConfig field."""
    family = build_family(cfg)
    if cfg.algo == "maml":
        num_envs = cfg.meta.meta_batch_size * cfg.meta.episodes_per_task
    else:
        num_envs = cfg.rl2.num_envs
    fields = {"num_envs": num_envs, "num_steps": family.max_episode_steps} | dict(ppo or {})
    fields["num_minibatches"] = fields.get("num_minibatches") or next(
        m for m in (4, 5, 3, 2, 1) if fields["num_envs"] % m == 0
    )
    ppo_cfg = dataclasses.replace(
        PPOConfig(), total_steps=int(total_steps), seed=cfg.seed, **fields
    )
    return TrainConfig(
        algo="ppo",
        family=cfg.family,
        family_kwargs=dict(cfg.family_kwargs),
        max_episode_steps=cfg.max_episode_steps,
        seed=cfg.seed,
        policy=dataclasses.replace(cfg.policy, layer=dict(cfg.policy.layer)),
        ppo=ppo_cfg,
        run=RunConfig(root=str(root), name="multitask", threads=cfg.run.threads),
        logging=dataclasses.replace(cfg.logging),
        eval=dataclasses.replace(cfg.eval),
    )


def find_or_train_multitask(
    run: RunDir | str | Path,
    root: str | Path | None = None,
    ppo: dict[str, Any] | None = None,
    checkpoint: str = "latest",
) -> RunDir:
    """The multi-task PPO baseline for a meta run, with the meta run's env-step budget (its
    checkpoint's ``global_step``): reused from ``root`` (default ``RUN_DIR/baselines``) when a run
    with the same experiment config is there (finished, or resumed if it was cut off), else
    trained there."""
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    cfg = run.load_config(TrainConfig)
    budget = int(run.load_checkpoint(checkpoint)["trainer"]["global_step"])
    root = Path(root) if root is not None else run.path / "baselines"
    mt = multitask_config(cfg, budget, root, ppo)
    want = _experiment(mt)
    for path in sorted(root.glob("multitask-*"), reverse=True):
        try:
            other = RunDir.open(path)
            same = _experiment(other.load_config(TrainConfig)) == want
        except (ValueError, OSError):
            continue
        if not same:
            continue
        status = (
            json.loads((path / STATUS_FILE).read_text()) if (path / STATUS_FILE).exists() else {}
        )
        if status.get("status") == "finished":
            log.info("reusing the multi-task baseline %s", path)
            return other
        if status.get("status") in ("running", "stopped"):
            log.info("resuming the multi-task baseline %s", path)
            return resume(path)
    log.info("training the multi-task PPO baseline (%d env steps) under %s", budget, root)
    return train(mt)
