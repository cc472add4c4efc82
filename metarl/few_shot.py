"""Few-shot adaptation of a trained run (``metarl adapt-eval RUN_DIR``): the run's own adaptation
(inner gradient steps, or episodes of an RL² trial) against a fine-tuned multi-task PPO policy and
a policy trained from scratch, on the same held-out tasks and seeds (:func:`adapt_evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssm.util import write_atomic

from .evaluation import _load_policy, _meta_learner
from .harness import (
    seed_everything,
)
from .meta import adapt_eval
from .meta.adaptation import (
    curves_markdown,
    finetune_learner,
    in_context_eval,
    plot_curves,
    summarize_curves,
)
from .run_dir import RunDir
from .runner import find_or_train_multitask
from .train_config import TrainConfig, build_family, build_policy

log = logging.getLogger(__name__)

__all__ = ["adapt_eval_markdown", "adapt_evaluate"]


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
