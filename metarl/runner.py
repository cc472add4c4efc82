"""The experiment runner: a config in, a run directory out (train, resume, evaluate).

``metarl train CONFIG [key=value ...]`` and ``metarl eval RUN_DIR`` are thin wrappers over
:func:`train`, :func:`resume` and :func:`evaluate`. A run is a function of its config and its one
seed: the global RNGs are seeded from it, the trainer draws tasks and env seeds from
``(seed, iteration)`` and samples actions from one generator. A checkpoint, written atomically
every ``run.checkpoint_every`` iterations, holds the trainer's state (parameters, optimiser,
generator, counters) and the global RNG states; :func:`resume` restores them, drops the metrics
rows logged after the checkpoint and continues. For RL² a resumed run ends with the same metrics as
an uninterrupted one on CPU (tested, including a SIGKILL mid-run).

A non-finite loss raises :class:`TrainingDiverged`, naming the quantity; nothing is checkpointed
after the last finite iteration, so the last good checkpoint stays the newest one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ssm.policy import SequencePolicy

from .config import load_config, write_atomic
from .ppo import PPOConfig, PPOTrainer
from .rl2 import RL2Config, RL2Trainer, evaluate_trials
from .run_dir import RunDir, capture_rng_state, restore_rng_state
from .tasks import TaskFamily, make_family
from .tracking import LoggingConfig, Tracker

log = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "PolicyConfig",
    "RunConfig",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "resume",
    "train",
]

STATUS_FILE = "status.json"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the run stopped and its last good checkpoint was kept."""


@dataclass
class PolicyConfig:
    """The sequence policy (see ``ssm.SequencePolicy``)."""

    kind: str = "mamba"
    """sequence layer: mamba, s4d, s5, gru or lstm"""
    d_model: int = 64
    """width of the residual stream"""
    n_layers: int = 2
    """number of sequence layers"""
    encoder_hidden: int = 128
    """hidden width of the observation encoder"""
    box_head: Literal["gaussian", "tanh"] = "gaussian"
    """action head for continuous actions"""
    layer: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for the layer (e.g. d_state, backend)"""


@dataclass
class RunConfig:
    """Where the run directory goes and how often it is checkpointed."""

    root: str = "runs"
    """folder that holds run directories"""
    name: str | None = None
    """run name prefix (default: a timestamp)"""
    checkpoint_every: int = 10
    """iterations between checkpoints (the last iteration is always checkpointed)"""
    keep_checkpoints: int = 3
    """checkpoints kept on disk"""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)"""
    stop_after: int | None = None
    """stop (resumably) after this many iterations in this process; for tests and time slicing"""


@dataclass
class EvalConfig:
    """The evaluation at the end of training and of ``metarl eval``."""

    tasks: int = 200
    """held-out tasks, one trial each"""
    split: Literal["train", "test"] = "test"
    """which split the tasks come from"""
    seed: int = 12345
    """seed of the task sample and the evaluation rollouts"""
    deterministic: bool = False
    """act greedily instead of sampling"""


@dataclass
class TrainConfig:
    """One training run: ``metarl train CONFIG.yaml key=value ...``."""

    algo: Literal["rl2", "ppo"] = "rl2"
    """rl2: in-context meta-RL over trials; ppo: multi-task PPO over num_envs train tasks"""
    family: str = "bandit"
    """task family spec, e.g. bandit, nav2d, cartpole, metaworld-ml1:reach-v3"""
    family_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the family (e.g. k, horizon)"""
    seed: int = 1
    """the run's one seed (it overrides rl2.seed and ppo.seed)"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """the sequence policy"""
    rl2: RL2Config = field(default_factory=RL2Config)
    """RL² settings (algo=rl2)"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings (algo=ppo)"""
    run: RunConfig = field(default_factory=RunConfig)
    """run directory and checkpoints"""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """wandb and the progress bar"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """evaluation on held-out tasks"""


# --- building blocks --------------------------------------------------------------------------


def build_family(cfg: TrainConfig) -> TaskFamily:
    return make_family(cfg.family, **cfg.family_kwargs)


def build_policy(cfg: TrainConfig, family: TaskFamily) -> SequencePolicy:
    p = cfg.policy
    return SequencePolicy(
        family.observation_space,
        family.action_space,
        kind=p.kind,
        d_model=p.d_model,
        n_layers=p.n_layers,
        in_context=cfg.algo == "rl2",
        box_head=p.box_head,
        encoder_hidden=p.encoder_hidden,
        layer_kwargs=dict(p.layer),
    )


def build_trainer(cfg: TrainConfig, policy: SequencePolicy, family: TaskFamily):
    if cfg.algo == "rl2":
        return RL2Trainer(policy, family, dataclasses.replace(cfg.rl2, seed=cfg.seed))
    ppo = dataclasses.replace(cfg.ppo, seed=cfg.seed)
    tasks = family.sample(ppo.num_envs, split="train", seed=cfg.seed)
    return PPOTrainer(policy, family.make_vector_env(tasks, seed=cfg.seed), ppo)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds third-party code that uses the global)
    torch.manual_seed(seed)


# --- train / resume ---------------------------------------------------------------------------


def train(
    config: TrainConfig | str | Path,
    overrides: Iterable[str] = (),
    run: RunDir | None = None,
) -> RunDir:
    """Train from a config (a ``TrainConfig`` or a YAML path plus dotted ``overrides``) into a new
    run directory under ``config.run.root``; returns it."""
    cfg = config if isinstance(config, TrainConfig) else load_config(TrainConfig, config, overrides)
    if run is None:
        run = RunDir.create(cfg.run.root, cfg.run.name, cfg, cfg.seed)
    return _run(cfg, run, resuming=False)


def resume(run_dir: str | Path, overrides: Iterable[str] = ()) -> RunDir:
    """Continue a run from its latest readable checkpoint (``overrides`` may change only
    ``run.*`` and ``logging.*`` settings, e.g. ``run.stop_after=null``)."""
    run = RunDir.open(run_dir)
    overrides = list(overrides)
    for o in overrides:
        if not o.startswith(("run.", "logging.")):
            raise ValueError(
                f"resume override {o!r} would change the experiment; only run.* and logging.* "
                "settings may change on resume"
            )
    cfg = run.load_config(TrainConfig, overrides)
    return _run(cfg, run, resuming=True)


def _run(cfg: TrainConfig, run: RunDir, resuming: bool) -> RunDir:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.seed)
    family = build_family(cfg)
    policy = build_policy(cfg, family)
    trainer = build_trainer(cfg, policy, family)
    if resuming and run.checkpoints():
        state = run.load_checkpoint("latest")
        trainer.load_state_dict(state["trainer"])
        restore_rng_state(state["rng"])
        run.rewind_metrics(trainer.global_step)
        log.info("resumed %s at iteration %d", run.path, trainer.iteration)
    elif resuming:  # killed before the first checkpoint: start over in the same directory
        run.rewind_metrics(-1)
    tracker = Tracker(
        run, cfg.logging, trainer.iterations, trainer.iteration, run_config=cfg, resume=resuming
    )
    _write_status(run, "running", trainer)
    exit_code, ran = 1, 0
    try:
        while not trainer.done:
            if cfg.run.stop_after is not None and ran >= cfg.run.stop_after:
                _write_status(run, "stopped", trainer)
                exit_code = 0
                return run
            try:
                row = trainer.step()
            except FloatingPointError as e:
                last = run.checkpoints()
                kept = f"; last good checkpoint: {last[-1]}" if last else "; no checkpoint yet"
                message = f"{e}{kept}"
                _write_status(run, "diverged", trainer, message)
                raise TrainingDiverged(message) from e
            ran += 1
            tracker.log(row.global_step, row)
            if trainer.done or trainer.iteration % cfg.run.checkpoint_every == 0:
                _checkpoint(run, trainer, cfg)
        run.plot_metrics(_plot_keys(run), "training.png")
        results = evaluate(run, cfg=cfg, policy=policy, family=family)
        tracker.summary(results["headline"])
        _write_status(run, "finished", trainer)
        exit_code = 0
        return run
    finally:
        tracker.close(exit_code)


def _checkpoint(run: RunDir, trainer, cfg: TrainConfig) -> None:
    state = {"trainer": trainer.state_dict(), "rng": capture_rng_state()}
    run.save_checkpoint(trainer.global_step, state, keep=cfg.run.keep_checkpoints)


def _write_status(run: RunDir, status: str, trainer, message: str | None = None) -> None:
    body = {
        "status": status,
        "iteration": trainer.iteration,
        "iterations": trainer.iterations,
        "global_step": trainer.global_step,
        "message": message,
    }
    write_atomic(run.path / STATUS_FILE, (json.dumps(body, indent=2) + "\n").encode())


def _plot_keys(run: RunDir) -> list[str]:
    wanted = ["episodic_return", "value_loss", "entropy", "approx_kl", "explained_variance"]
    logged = set().union(*(r.keys() for r in run.read_metrics())) if run.read_metrics() else set()
    return [k for k in wanted if k in logged]


# --- evaluation -------------------------------------------------------------------------------


def _ci95(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    half = 1.96 * np.std(x, ddof=1) / np.sqrt(len(x)) if len(x) > 1 else math.nan
    return {"mean": float(np.mean(x)), "ci95": float(half), "n": len(x)}


def evaluate(
    run: RunDir | str | Path,
    checkpoint: str = "latest",
    cfg: TrainConfig | None = None,
    policy: SequencePolicy | None = None,
    family: TaskFamily | None = None,
    overrides: Iterable[str] = (),
) -> dict:
    """Evaluate a run's policy on held-out tasks; writes ``eval.json`` and ``plots/eval.png``.

    In-context (RL²) policies play one trial per task and are scored per episode of the trial
    (so adaptation shows as later episodes beating earlier ones); on bandits the cumulative
    pseudo-regret is reported next to random, UCB1 and Thompson sampling on the same tasks.
    Multi-task PPO policies play one episode per task. Results are mean ± 95% CI over tasks.
    """
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    if cfg is None:
        cfg = run.load_config(TrainConfig)
    if overrides:
        cfg = load_config(TrainConfig, _with_overrides(cfg), overrides)
    if family is None:
        family = build_family(cfg)
    if policy is None:
        seed_everything(cfg.seed)
        policy = build_policy(cfg, family)
        state = run.load_checkpoint(checkpoint)
        policy.load_state_dict(state["trainer"]["policy"])
    policy.eval()
    e = cfg.eval
    tasks = family.sample(e.tasks, split=e.split, seed=e.seed)
    episodes = cfg.rl2.episodes_per_trial if cfg.algo == "rl2" else 1
    if cfg.algo == "rl2":
        out = evaluate_trials(
            policy, family, tasks, episodes, seed=e.seed, deterministic=e.deterministic
        )
    else:
        out = _evaluate_episodes(policy, family, tasks, e.seed, e.deterministic)
    per_episode = out["episode_returns"]  # (tasks, episodes)
    results: dict[str, Any] = {
        "family": cfg.family,
        "algo": cfg.algo,
        "split": e.split,
        "tasks": len(tasks),
        "episodes_per_trial": episodes,
        "episode_return": [_ci95(per_episode[:, i]) for i in range(episodes)],
    }
    if family.reports_success:  # per episode: success at any step of it
        results["success"] = [_ci95(s.max(-1)) for s in np.split(out["success"], episodes, axis=1)]
    if episodes > 1:
        results["improvement_last_minus_first"] = _ci95(per_episode[:, -1] - per_episode[:, 0])
    headline = {"eval/return_ep1": results["episode_return"][0]["mean"]}
    if episodes > 1:
        headline[f"eval/return_ep{episodes}"] = results["episode_return"][-1]["mean"]
    if cfg.family == "bandit" and cfg.algo == "rl2":
        results["regret"] = _bandit_regret(tasks, out["actions"], e.seed)
        headline["eval/regret"] = results["regret"]["policy"]["mean"]
    results["headline"] = headline
    results["checkpoint"] = checkpoint
    write_atomic(run.path / "eval.json", (json.dumps(results, indent=2) + "\n").encode())
    _plot_eval(run, results)
    return results


def _with_overrides(cfg: TrainConfig) -> dict:
    from .config import config_to_dict

    return config_to_dict(cfg)


def _bandit_regret(tasks, actions: np.ndarray, seed: int) -> dict:
    from .tasks.bandit import CLASSIC_PLAYERS, pseudo_regret

    probs = [np.asarray(t.param("probs")) for t in tasks]
    horizon = actions.shape[1]
    table = {"policy": _ci95([pseudo_regret(p, a.reshape(-1)) for p, a in zip(probs, actions)])}
    rng = np.random.default_rng(seed)
    for name, play in CLASSIC_PLAYERS.items():
        table[name] = _ci95([pseudo_regret(p, play(p, horizon, rng)) for p in probs])
    return table


def _evaluate_episodes(policy, family, tasks, seed: int, deterministic: bool) -> dict:
    from .rollout import Rollout

    envs = family.make_vector_env(list(tasks), seed=seed)
    rollout = Rollout(policy, envs, generator=torch.Generator().manual_seed(seed), seed=seed)
    with torch.no_grad():
        traj = rollout.collect(family.max_episode_steps, deterministic=deterministic)
    envs.close()
    rewards = traj.rewards.T.double().numpy()
    return {
        "episode_returns": rewards.sum(-1, keepdims=True),
        "success": traj.success.T.double().numpy(),
    }


def _plot_eval(run: RunDir, results: dict) -> Path:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    eps = results["episode_return"]
    x = np.arange(1, len(eps) + 1)
    ax.bar(x, [r["mean"] for r in eps], yerr=[r["ci95"] for r in eps], capsize=4)
    ax.set_xticks(x)
    ax.set_xlabel("episode in trial")
    ax.set_ylabel("return (mean ± 95% CI)")
    ax.set_title(f"{results['family']} ({results['split']} tasks, n={results['tasks']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(run.plot_dir / "eval.png", buf.getvalue())
