"""Evaluating a run's policy: ``metarl eval RUN_DIR`` and the evaluation at the end of training
(:func:`evaluate`): held-out tasks, per episode of an RL² trial, bandit regret against the
classic players, and the adaptation curve of a gradient meta-learner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm.policy import SequencePolicy
from ssm.util import mean_ci as _ci95
from ssm.util import write_atomic

from .config import config_to_dict, load_config
from .harness import (
    seed_everything,
)
from .meta import adapt_eval, make_learner
from .meta.adaptation import (
    plot_curves,
    summarize_curves,
)
from .meta.train import restore_inner_lrs
from .rl2 import evaluate_trials
from .run_dir import RunDir
from .tasks import TaskFamily
from .train_config import TrainConfig, build_family, build_policy

log = logging.getLogger(__name__)

__all__ = ["evaluate"]


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
    run = run if isinstance(run, RunDir) else RunDir.open(run, expect="train")
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


def _load_policy(run: RunDir, cfg: TrainConfig, family: TaskFamily, checkpoint: str):
    seed_everything(cfg.seed)
    policy = build_policy(cfg, family)
    state = run.load_checkpoint(checkpoint)
    policy.load_state_dict(state["trainer"]["policy"])
    policy.eval()
    return policy, state
