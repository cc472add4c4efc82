"""The experiment runner: a config in, a run directory out (train, resume, evaluate).

``metarl train CONFIG [key=value ...]``, ``metarl eval RUN_DIR`` and ``metarl adapt-eval RUN_DIR``
are thin wrappers over :func:`train`, :func:`resume`, :func:`evaluate` and :func:`adapt_evaluate`.
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ssm.policy import SequencePolicy
from ssm.util import mean_ci as _ci95
from ssm.util import write_atomic

from .backends import make_collector, require_ray
from .config import ConfigError, config_to_dict, load_config
from .harness import (
    STATUS_FILE,
    TrainingDiverged,
    check_resume_overrides,
    restore,
    run_loop,
    seed_everything,
)
from .meta import MetaTrainer, adapt_eval, make_learner
from .meta.adaptation import (
    curves_markdown,
    finetune_learner,
    in_context_eval,
    plot_curves,
    summarize_curves,
)
from .meta.train import restore_inner_lrs
from .ppo import PPOConfig, PPOTrainer
from .rl2 import RL2Trainer, evaluate_trials
from .run_dir import RunDir
from .tasks import TaskFamily, make_family
from .tracking import LoggingConfig, Tracker
from .train_config import EvalConfig, PolicyConfig, RunConfig, TrainConfig

log = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "PolicyConfig",
    "RunConfig",
    "TrainConfig",
    "TrainingDiverged",
    "adapt_evaluate",
    "evaluate",
    "find_or_train_multitask",
    "resume",
    "train",
]


# --- building blocks --------------------------------------------------------------------------


def build_family(cfg: TrainConfig) -> TaskFamily:
    family = make_family(cfg.family, **cfg.family_kwargs)
    if cfg.max_episode_steps is not None:
        if cfg.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {cfg.max_episode_steps}")
        family.max_episode_steps = cfg.max_episode_steps
    return family


def build_policy(cfg: TrainConfig, family: TaskFamily) -> SequencePolicy:
    return cfg.policy.build(family.observation_space, family.action_space, cfg.algo == "rl2")


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
    check_backend(cfg)
    if run is None:
        run = RunDir.create(cfg.run.root, cfg.run.name, cfg, cfg.seed)
    return _run(cfg, run, resuming=False)


def resume(run_dir: str | Path, overrides: Iterable[str] = ()) -> RunDir:
    """Continue a run from its latest readable checkpoint (``overrides`` may change only
    ``run.*`` and ``logging.*`` settings, e.g. ``run.stop_after=null``)."""
    run = RunDir.open(run_dir)
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


# --- evaluation -------------------------------------------------------------------------------


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
    Multi-task PPO policies play one episode per task. Gradient meta-learners (``maml``) are
    scored before adaptation and after each of ``eval.adapt_steps`` inner steps on
    ``meta.episodes_per_task`` sampled episodes per task (see :func:`metarl.meta.adapt_eval`).
    Results are mean ± 95% CI over tasks (and seeds).
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
    if cfg.algo == "maml":
        return _evaluate_adaptation(run, cfg, policy, family, checkpoint)
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


# --- gradient meta-learners: adaptation evaluation and baselines ------------------------------


def _meta_learner(cfg: TrainConfig, policy: SequencePolicy, state: dict):
    learner = make_learner(policy, cfg.meta)
    restore_inner_lrs(learner, state["trainer"]["inner_lrs"])
    return learner


def _evaluate_adaptation(run: RunDir, cfg: TrainConfig, policy, family, checkpoint: str) -> dict:
    e = cfg.eval
    steps = cfg.meta.inner_steps if e.adapt_steps is None else e.adapt_steps
    tasks = family.sample(e.tasks, split=e.split, seed=e.seed)
    seeds = [e.seed + i for i in range(e.seeds)]
    learner = _meta_learner(cfg, policy, run.load_checkpoint(checkpoint))
    curves = adapt_eval(
        policy, family, learner, tasks, steps, cfg.meta.episodes_per_task, seeds, cfg.meta.num_steps
    )
    summary = summarize_curves(curves, range(steps + 1))
    results: dict[str, Any] = {
        "family": cfg.family,
        "algo": cfg.algo,
        "meta_algo": cfg.meta.algo,
        "split": e.split,
        "tasks": len(tasks),
        "episodes": cfg.meta.episodes_per_task,
        "seeds": seeds,
        **summary,
    }
    results["headline"] = {
        "eval/return_pre": summary["return"][0]["mean"],
        f"eval/return_step{steps}": summary["return"][-1]["mean"],
    }
    results["checkpoint"] = checkpoint
    write_atomic(run.path / "eval.json", (json.dumps(results, indent=2) + "\n").encode())
    title = f"{cfg.family}: {cfg.meta.algo} ({e.split} tasks, n={len(tasks)})"
    write_atomic(run.plot_dir / "eval.png", plot_curves({cfg.meta.algo: summary}, title, "step"))
    return results


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


def _load_policy(run: RunDir, cfg: TrainConfig, family: TaskFamily, checkpoint: str):
    seed_everything(cfg.seed)
    policy = build_policy(cfg, family)
    state = run.load_checkpoint(checkpoint)
    policy.load_state_dict(state["trainer"]["policy"])
    policy.eval()
    return policy, state


def adapt_evaluate(
    run: RunDir | str | Path,
    split: Literal["train", "test"] = "test",
    steps: int | Sequence[int] = 1,
    episodes: int | None = None,
    seeds: int = 3,
    num_tasks: int | None = None,
    baselines: bool = False,
    multitask: str | Path | None = None,
    multitask_ppo: dict[str, Any] | None = None,
    inner_lr: float | None = None,
    finetune_objective: Literal["vpg", "ppo"] = "vpg",
    checkpoint: str = "latest",
) -> dict:
    """Few-shot adaptation of a run's policy on ``num_tasks`` (default ``eval.tasks``) tasks of
    ``split``: return and success before adaptation and after each step (an int ``S``: steps
    ``0..S``; or the list of steps to report), as mean ± 95% CI over tasks and ``seeds`` seeds.

    * maml runs: inner steps of the run's own learner on ``episodes`` (default
      ``meta.episodes_per_task``) freshly sampled episodes per task and step;
    * rl2 runs: one trial of ``S + 1`` episodes per task (``episodes`` trials per task, averaged),
      step ``s`` being episode ``s + 1``;
    * ppo runs: the multi-task policy fine-tuned as below.

    With ``baselines``, on the same tasks, seeds and support budget: ``multitask_finetune``, a
    multi-task PPO policy (the run dir ``multitask``, else :func:`find_or_train_multitask` with
    the same env-step budget) fine-tuned by SGD steps on the VPG (or PPO) surrogate at the inner lr
    (``inner_lr``, default ``meta.inner_lr``); and ``scratch``, the run's own initialisation (the
    same seed; not in-context) adapted by the same steps.

    Writes ``adapt_eval.json``, ``adapt_eval.md`` and ``plots/adapt_eval.png`` into the run dir and
    returns the JSON's content.
    """
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    cfg = run.load_config(TrainConfig)
    family = build_family(cfg)
    report = list(range(steps + 1)) if isinstance(steps, int) else sorted({int(k) for k in steps})
    if not report or report[0] < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    last = report[-1]
    policy, state = _load_policy(run, cfg, family, checkpoint)
    tasks = family.sample(num_tasks or cfg.eval.tasks, split=split, seed=cfg.eval.seed)
    seed_list = [cfg.eval.seed + i for i in range(seeds)]
    k = episodes or cfg.meta.episodes_per_task
    length = (cfg.meta.num_steps if cfg.algo == "maml" else None) or family.max_episode_steps
    lr = cfg.meta.inner_lr if inner_lr is None else float(inner_lr)

    def finetuned(pol):
        learner = finetune_learner(pol, cfg.meta, lr, finetune_objective)
        return adapt_eval(pol, family, learner, tasks, last, k, seed_list, length)

    curves: dict[str, dict] = {}
    budgets = {"run": int(state["trainer"]["global_step"])}
    if cfg.algo == "maml":
        learner = _meta_learner(cfg, policy, state)
        curves[cfg.meta.algo] = adapt_eval(
            policy, family, learner, tasks, last, k, seed_list, length
        )
        x_label = "gradient step"
    elif cfg.algo == "rl2":
        curves["rl2"] = in_context_eval(policy, family, tasks, last, k, seed_list)
        x_label = "step (rl2: episode of the trial - 1; others: gradient steps)"
    else:
        curves["multitask_finetune"] = finetuned(policy)
        x_label = "gradient step"
    multitask_run = None
    if baselines:
        if cfg.algo != "ppo":
            if multitask is not None:
                multitask_run = RunDir.open(multitask)
            else:
                multitask_run = find_or_train_multitask(
                    run, ppo=multitask_ppo, checkpoint=checkpoint
                )
            mt_cfg = multitask_run.load_config(TrainConfig)
            same = ("family", "family_kwargs", "max_episode_steps")
            if mt_cfg.algo != "ppo" or any(getattr(mt_cfg, f) != getattr(cfg, f) for f in same):
                raise ValueError(
                    f"{multitask_run.path} is not a multi-task PPO run on this run's family "
                    f"({mt_cfg.algo} on {mt_cfg.family} {mt_cfg.family_kwargs})"
                )
            mt_policy, mt_state = _load_policy(multitask_run, mt_cfg, family, "latest")
            budgets["multitask"] = int(mt_state["trainer"]["global_step"])
            curves["multitask_finetune"] = finetuned(mt_policy)
        seed_everything(cfg.seed)
        scratch = build_policy(dataclasses.replace(cfg, algo="ppo"), family)
        curves["scratch"] = finetuned(scratch)
    summaries = {name: summarize_curves(c, report) for name, c in curves.items()}
    results: dict[str, Any] = {
        "run": str(run.path),
        "checkpoint": checkpoint,
        "algo": cfg.algo,
        "meta_algo": cfg.meta.algo if cfg.algo == "maml" else None,
        "family": cfg.family,
        "split": split,
        "num_tasks": len(tasks),
        "seeds": seed_list,
        "episodes": k,
        "episode_steps": length,
        "support_episodes": k * max(1, length // family.max_episode_steps),
        "x": x_label,
        "finetune": {"inner_lr": lr, "objective": finetune_objective},
        "env_steps": budgets,
        "multitask_run": None if multitask_run is None else str(multitask_run.path),
        "methods": summaries,
        "tasks": [t.to_dict() for t in tasks],
        "curves": {
            name: {key: np.asarray(c[key]).tolist() for key in ("returns", "success")}
            for name, c in curves.items()
        },
    }
    write_atomic(run.path / "adapt_eval.json", (json.dumps(results, indent=1) + "\n").encode())
    table = adapt_eval_markdown(results)
    write_atomic(run.path / "adapt_eval.md", table.encode())
    title = f"{cfg.family} ({split} tasks, n={len(tasks)}, {len(seed_list)} seeds, {k} episodes)"
    write_atomic(run.plot_dir / "adapt_eval.png", plot_curves(summaries, title, "step"))
    return results


def adapt_eval_markdown(results: dict) -> str:
    """The ``adapt_eval.json`` content as a markdown report (header and tables)."""
    head = (
        f"# Adaptation on {results['family']} ({results['split']} tasks)\n\n"
        f"{results['num_tasks']} tasks x {len(results['seeds'])} seeds; per task and step "
        f"{results['support_episodes']} episodes ({results['episodes']} envs x "
        f"{results['episode_steps']} steps); fine-tuning: SGD on the "
        f"{results['finetune']['objective']} surrogate, lr {results['finetune']['inner_lr']:g}; "
        f"env steps: {results['env_steps']}. Mean ± 95% CI over (task, seed) pairs.\n\n"
    )
    return head + curves_markdown(
        results["methods"], results["methods"][next(iter(results["methods"]))]["steps"], "step"
    )
