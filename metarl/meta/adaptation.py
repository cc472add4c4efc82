"""Few-shot adaptation curves: return and success before adaptation and after each adaptation
step, for gradient meta-learners, in-context (RL²) policies and fine-tuning baselines, with
Student-t 95% confidence intervals over tasks and seeds (:func:`ssm.util.mean_ci`).

* :func:`adapt_eval`: a gradient learner, Finn et al.'s protocol: sample ``episodes`` episodes
  per task with ``φ_s``, record them, take one inner step on exactly those episodes, repeat.
* :func:`in_context_eval`: an in-context (RL²) policy plays one trial of ``steps + 1`` episodes
  per task; "step" ``s`` is episode ``s + 1`` of the trial (its state carries the adaptation).
* :func:`finetune_learner`: plain policy-gradient fine-tuning as a learner, for the baselines
  (a multi-task policy, or a fresh initialisation, adapted by SGD steps on the VPG surrogate with
  the meta-learner's inner lr, support size and advantage estimator).
* :func:`summarize_curves`, :func:`curves_markdown`, :func:`plot_curves`: mean ± 95% CI per
  step, the paired improvement over step 0, a markdown table and a PNG.

Every method is run on the same tasks with the same seeds: seed ``σ`` fixes the action-sampling
generator and the env seeds of every collection (``σ · 7919 + s`` at step ``s``), so two methods
see the same tasks, start states and support budget.

Success is per episode: whether ``info["success"]`` held at *any* step of it (Meta-World's
criterion; the runner's ``eval`` counts it the same way).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from metarl.task_rollout import collect_tasks, episode_success_any
from metarl.tasks import Task, TaskFamily
from ssm.policy import SequencePolicy
from ssm.util import mean_ci

from . import functional as F
from .config import MetaConfig
from .learners import IMAML, MAML, MetaLearner

__all__ = [
    "adapt_eval",
    "curves_markdown",
    "finetune_learner",
    "in_context_eval",
    "parse_steps",
    "plot_curves",
    "summarize_curves",
]


def adapt_eval(
    policy: SequencePolicy,
    family: TaskFamily,
    learner: MetaLearner,
    tasks: Sequence[Task],
    steps: int = 3,
    episodes: int = 20,
    seeds: Sequence[int] = (0,),
    num_steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Returns and success before adaptation and after each of ``1..steps`` inner steps.

    Per seed, all ``tasks`` at once (one ``vmap`` over tasks), as in Finn et al.'s evaluation:
    ``φ_0 = θ``; for ``s = 0..steps``: sample ``episodes`` envs per task (``num_steps`` steps
    each, default one episode) with ``φ_s`` and record their mean episode return and success;
    then ``φ_{s+1}`` is one inner step of the learner on exactly those episodes. The learner's
    inner lr (learned lrs: the one of step ``s``, the last learned one beyond) is used.

    Returns ``returns`` and ``success`` of shape ``(len(seeds), len(tasks), steps + 1)`` and
    ``steps`` (``0..steps``).
    """
    _check_args(steps, episodes, tasks, seeds)
    n = len(tasks)
    length = num_steps or family.max_episode_steps
    returns = np.full((len(seeds), n, steps + 1), np.nan)
    success = np.full((len(seeds), n, steps + 1), np.nan)
    theta = learner.params()
    anchor = theta if isinstance(learner, IMAML) else None
    for si, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        envs = family.make_vector_env(list(tasks), envs_per_task=episodes)
        try:
            phi = None
            for s in range(steps + 1):
                traj = collect_tasks(
                    policy,
                    family,
                    tasks,
                    episodes,
                    length,
                    seed * 7919 + s,
                    phi,
                    generator=gen,
                    vectorize=learner.vectorize,
                    envs=envs,
                )
                returns[si, :, s], success[si, :, s] = per_task_episode_stats(traj, n)
                if s == steps:
                    break
                batch = learner.prepare(traj, n)
                start = F.detach(
                    {k: v.expand(n, *v.shape) for k, v in theta.items()} if phi is None else phi
                )

                def one(p, b, s=s):
                    return F.detach(learner.inner_step(p, b, s, anchor=anchor))

                with torch.no_grad():
                    phi = learner._map(one, (start, batch), (0, 0))
        finally:
            envs.close()
    return {"returns": returns, "success": success, "steps": np.arange(steps + 1)}


def in_context_eval(
    policy: SequencePolicy,
    family: TaskFamily,
    tasks: Sequence[Task],
    steps: int = 1,
    episodes: int = 1,
    seeds: Sequence[int] = (0,),
) -> dict[str, np.ndarray]:
    """An in-context policy's curve: ``episodes`` trials of ``steps + 1`` episodes per task and
    seed (averaged per task); entry ``s`` is episode ``s + 1`` of the trial.

    Returns ``returns`` and ``success`` of shape ``(len(seeds), len(tasks), steps + 1)``.
    """
    from metarl.rl2 import evaluate_trials

    if not getattr(policy, "in_context", False):
        raise ValueError("in_context_eval needs a policy built with in_context=True")
    _check_args(steps, episodes, tasks, seeds)
    n, e = len(tasks), steps + 1
    returns = np.full((len(seeds), n, e), np.nan)
    success = np.full((len(seeds), n, e), np.nan)
    repeated = [t for t in tasks for _ in range(episodes)]
    for si, seed in enumerate(seeds):
        out = evaluate_trials(policy, family, repeated, e, seed=seed)
        returns[si] = out["episode_returns"].reshape(n, episodes, e).mean(1)
        per_episode = out["success"].reshape(n, episodes, e, -1).max(-1)  # any step of it
        success[si] = per_episode.mean(1)
    return {"returns": returns, "success": success, "steps": np.arange(e)}


def finetune_learner(
    policy: SequencePolicy,
    config: MetaConfig | None = None,
    inner_lr: float | None = None,
    objective: Literal["vpg", "ppo"] = "vpg",
) -> MAML:
    """Plain fine-tuning as a learner for :func:`adapt_eval`: each step is one SGD step of size
    ``inner_lr`` (default ``config.inner_lr``) on the VPG (or PPO-clip) surrogate of the episodes
    just sampled, with ``config``'s advantage estimator. On freshly sampled on-policy data both
    surrogates have the policy gradient as their gradient, so this is exactly the step a
    meta-learner takes at test time, without the meta-learned initialisation."""
    if objective not in ("vpg", "ppo"):
        raise ValueError(f"objective must be 'vpg' or 'ppo', got {objective!r}")
    cfg = config or MetaConfig()
    return MAML(
        policy,
        cfg.inner_lr if inner_lr is None else inner_lr,
        1,
        first_order=True,
        inner_objective=objective,
        clip_coef=cfg.clip_coef,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        baseline=cfg.baseline,
        norm_adv=cfg.norm_adv,
        vf_coef=cfg.vf_coef,
        vectorize=cfg.vectorize,
        check_second_order=False,
    )


def per_task_episode_stats(traj, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean episode return and success (at any step) of each task's sub-envs ``[i·B, (i+1)·B)``."""
    per = traj.B // n_tasks
    rets, succ = np.zeros(n_tasks), np.zeros(n_tasks)
    for i in range(n_tasks):
        sub = traj[list(range(i * per, (i + 1) * per))]
        rets[i] = _mean(sub.episode_returns())
        succ[i] = _mean(episode_success_any(sub))
    return rets, succ


# -- summaries ------------------------------------------------------------------------------------


def parse_steps(text: str | int) -> list[int]:
    """``"S"`` -> ``[0, ..., S]``; ``"A..B"`` -> ``[A, ..., B]`` (both >= 0, ``A <= B``)."""
    text = str(text).strip()
    lo, sep, hi = text.partition("..")
    try:
        a, b = (int(lo), int(hi)) if sep else (0, int(text))
    except ValueError:
        msg = f"steps must look like 'S' or 'A..B' (e.g. '0..3'), got {text!r}"
        raise ValueError(msg) from None
    if a < 0 or b < a:
        raise ValueError(f"steps {text!r}: need 0 <= A <= B")
    return list(range(a, b + 1))


def summarize_curves(curves: Mapping[str, np.ndarray], steps: Sequence[int]) -> dict:
    """Per reported step: return and success as mean ± Student-t 95% CI over all (seed, task)
    pairs, and the paired improvement ``step s - step 0`` of each pair."""
    r, s = np.asarray(curves["returns"]), np.asarray(curves["success"])
    return {
        "steps": list(steps),
        "return": [mean_ci(r[:, :, k]) for k in steps],
        "success": [mean_ci(s[:, :, k]) for k in steps],
        "improvement": [mean_ci(r[:, :, k] - r[:, :, 0]) for k in steps],
    }


def curves_markdown(
    methods: Mapping[str, Mapping],
    steps: Sequence[int],
    x_label: str,
    with_success: bool = True,
    offset: int = 0,
) -> str:
    """A markdown table: one row per method, one column per reported step (mean ± Student-t 95%
    CI, stated beside each table's title). Columns are labelled ``x_label k + offset`` (in-context
    curves: step ``s`` is episode ``s + 1`` of the trial)."""

    def cell(d: Mapping) -> str:
        return f"{d['mean']:.3f} ± {d['ci95']:.3f}"

    lines = []
    parts = [("return", "return")] + ([("success", "success")] if with_success else [])
    first = f"{x_label} {offset}"
    parts.append(("improvement", f"return gain over {first} (paired)"))
    for key, title in parts:
        cols = [f"{x_label} {k + offset}" for k in steps]
        lines += [
            f"**{title}** (mean ± 95% CI, Student-t)",
            "",
            "| method | " + " | ".join(cols) + " |",
        ]
        lines.append("|---|" + "---|" * len(cols))
        for name, summary in methods.items():
            lines.append(f"| {name} | " + " | ".join(cell(d) for d in summary[key]) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(methods: Mapping[str, Mapping], title: str, x_label: str, offset: int = 0) -> bytes:
    """A PNG: return and success against the adaptation step (``+ offset``: in-context curves
    count episodes from 1), one line per method (± 95% CI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    FigureCanvasAgg(fig)
    for i, key in enumerate(("return", "success")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, summary in methods.items():
            y = [d["mean"] for d in summary[key]]
            err = [d["ci95"] for d in summary[key]]
            x = [k + offset for k in summary["steps"]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{key} (mean ± 95% CI)")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def _check_args(steps: int, episodes: int, tasks: Sequence[Task], seeds: Sequence[int]) -> None:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not tasks:
        raise ValueError("adaptation evaluation needs at least one task")
    if not seeds:
        raise ValueError("adaptation evaluation needs at least one seed")
