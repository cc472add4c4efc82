"""Few-shot adaptation of a trained run (``metarl adapt-eval RUN_DIR``): the run's own adaptation
(inner gradient steps, or episodes of an RL² trial) against a fine-tuned multi-task PPO policy and
a policy trained from scratch, on the same held-out tasks and seeds (:func:`adapt_evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

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
from .run_dir import RunDir, RunDirError
from .runner import find_or_train_multitask
from .train_config import TrainConfig, build_family, build_policy

log = logging.getLogger(__name__)

_REPORT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")

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
    output: str = "adapt_eval",
    overwrite: bool = False,
    progress: bool = False,
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

    Bandit rl2 runs also get UCB1 and Thompson sampling (``ucb1``, ``thompson``) playing the same
    trials: their statistics carry over from one episode of the trial to the next, as the RL²
    state does; their return is the expected return of the arms they pull.

    Writes ``<output>.json``, ``<output>.md`` and ``plots/<output>.png`` into the run dir and
    returns the JSON's content. An existing report of that name is refused (before anything is
    computed) unless ``overwrite``.
    """
    run = run if isinstance(run, RunDir) else RunDir.open(run, expect="train")
    if not _REPORT_NAME.fullmatch(output):
        raise ValueError(
            f"output must be a plain file stem ([A-Za-z0-9_.-], no leading dot), got {output!r}"
        )
    paths = [run.path / f"{output}.json", run.path / f"{output}.md", run.plot_dir / f"{output}.png"]
    if not overwrite and any(p.exists() for p in paths):
        raise RunDirError(
            f"{paths[0]} exists (an earlier adapt-eval); keep it and pass --output NAME for a new "
            "report, or replace it with --overwrite"
        )
    cfg = run.load_config(TrainConfig)
    family = build_family(cfg)
    report = list(range(steps + 1)) if isinstance(steps, int) else sorted({int(k) for k in steps})
    if not report or report[0] < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    for name, value in (
        ("seeds", seeds),
        ("episodes", episodes),
        ("num_tasks", num_tasks),
        ("inner_lr", inner_lr),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    last = report[-1]
    policy, state = _load_policy(run, cfg, family, checkpoint)
    tasks = family.sample(num_tasks or cfg.eval.tasks, split=split, seed=cfg.eval.seed)
    seed_list = [cfg.eval.seed + i for i in range(seeds)]
    k = episodes or cfg.meta.episodes_per_task
    length = (cfg.meta.num_steps if cfg.algo == "maml" else None) or family.max_episode_steps
    lr = cfg.meta.inner_lr if inner_lr is None else float(inner_lr)

    classic = cfg.algo == "rl2" and family.name == "bandit"
    methods = 1 + (2 if classic else 0) + (2 if baselines else 0)
    bar = tqdm(total=methods * len(seed_list), desc="adapt-eval", disable=not progress)

    def per_seed(fn) -> dict:
        """``fn(seeds)`` one seed at a time (each seed is independent), advancing the bar."""
        parts = []
        for seed in seed_list:
            parts.append(fn([seed]))
            bar.update(1)
        return {
            key: np.concatenate([np.asarray(p[key]) for p in parts])
            for key in ("returns", "success")
        }

    def finetuned(pol):
        learner = finetune_learner(pol, cfg.meta, lr, finetune_objective)
        return per_seed(lambda ss: adapt_eval(pol, family, learner, tasks, last, k, ss, length))

    curves: dict[str, dict] = {}
    budgets = {"run": int(state["trainer"]["global_step"])}
    if cfg.algo == "maml":
        learner = _meta_learner(cfg, policy, state)
        curves[cfg.meta.algo] = per_seed(
            lambda ss: adapt_eval(policy, family, learner, tasks, last, k, ss, length)
        )
    elif cfg.algo == "rl2":
        curves["rl2"] = per_seed(lambda ss: in_context_eval(policy, family, tasks, last, k, ss))
        if classic:
            for name in ("ucb1", "thompson"):
                curves[name] = per_seed(
                    lambda ss, name=name: classic_bandit_curves(
                        name, tasks, last, family.max_episode_steps, ss
                    )
                )
    else:
        curves["multitask_finetune"] = finetuned(policy)
    in_context = cfg.algo == "rl2"
    x_label = "trial episode" if in_context else "gradient step"
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
    bar.close()
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
        "x_offset": 1 if in_context else 0,
        "reports_success": bool(getattr(family, "reports_success", True)),
        "adaptation": _adaptation_text(cfg, learner if cfg.algo == "maml" else None),
        "finetune": (
            {"inner_lr": lr, "objective": finetune_objective}
            if cfg.algo == "ppo" or baselines
            else None
        ),
        "env_steps": budgets,
        "multitask_run": None if multitask_run is None else str(multitask_run.path),
        "methods": summaries,
        "tasks": [t.to_dict() for t in tasks],
        "curves": {
            name: {key: np.asarray(c[key]).tolist() for key in ("returns", "success")}
            for name, c in curves.items()
        },
    }
    write_atomic(paths[0], (json.dumps(results, indent=1) + "\n").encode())
    write_atomic(paths[1], adapt_eval_markdown(results).encode())
    title = f"{cfg.family} ({split} tasks, n={len(tasks)}, {len(seed_list)} seeds, {k} episodes)"
    png = plot_curves(summaries, title, x_label, offset=results["x_offset"])
    write_atomic(paths[2], png)
    log_curves(run, cfg.logging, output, summaries, results["x_offset"])
    return results


def log_curves(
    run: RunDir, logging_cfg: Any, name: str, summaries: dict[str, dict], offset: int
) -> None:
    """The report's curves where the run's training curves are: TensorBoard scalars
    ``<name>/<method>/return`` (and ``success``) at step = adaptation step (+ ``offset``) in
    ``RUN_DIR/tensorboard/<name>``, and a wandb run of job type ``adapt-eval`` (the run's wandb
    mode, offline by default)."""
    scalars = [
        (f"{name}/{method}/{key}", k + offset, d["mean"])
        for method, summary in summaries.items()
        for key in ("return", "success")
        for k, d in zip(summary["steps"], summary[key])
    ]
    if getattr(logging_cfg, "tensorboard", False):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; no event files for %s", name)
        else:
            with SummaryWriter(str(run.path / "tensorboard" / name)) as writer:
                for tag, step, value in scalars:
                    writer.add_scalar(tag, value, global_step=step)
    if getattr(logging_cfg, "wandb", "disabled") != "disabled":
        try:
            import wandb
        except ImportError:
            return
        wb = wandb.init(
            project=logging_cfg.project,
            name=f"{run.path.name}-{name}",
            dir=str(run.path),
            mode=logging_cfg.wandb,
            job_type="adapt-eval",
            settings=wandb.Settings(silent=True),
        )
        for step in sorted({s for _, s, _ in scalars}):
            wb.log({tag: v for tag, s, v in scalars if s == step}, step=step)
        wb.finish()


def classic_bandit_curves(
    player: str, tasks: Sequence, steps: int, horizon: int, seeds: Sequence[int]
) -> dict[str, np.ndarray]:
    """A classic bandit algorithm (``ucb1``, ``thompson`` or ``random``) playing one trial of
    ``steps + 1`` episodes of ``horizon`` pulls per task and seed, its statistics kept across the
    episodes. Entry ``s`` is the expected return ``Σ_t p[a_t]`` of episode ``s + 1``; ``success``
    is 0 (bandits report none). Shapes ``(len(seeds), len(tasks), steps + 1)``."""
    from .tasks.bandit import CLASSIC_PLAYERS

    play = CLASSIC_PLAYERS[player]
    e = steps + 1
    returns = np.zeros((len(seeds), len(tasks), e))
    for si, seed in enumerate(seeds):
        rng = np.random.default_rng([seed, len(tasks)])
        for ti, task in enumerate(tasks):
            probs = np.asarray(task.param("probs"), dtype=np.float64)
            arms = play(probs, e * horizon, rng)
            returns[si, ti] = probs[arms].reshape(e, horizon).sum(1)
    return {"returns": returns, "success": np.zeros_like(returns), "steps": np.arange(e)}


def _adaptation_text(cfg: TrainConfig, learner: Any) -> str:
    """How the run's own method adapts, for the report's header."""
    if cfg.algo == "maml":
        return (
            f"{cfg.meta.algo}: inner gradient steps of the run's own learner at inner lr "
            f"{cfg.meta.inner_lr:g} (lr mode {cfg.meta.lr_mode})"
        )
    if cfg.algo == "rl2":
        return (
            "rl2: in context, no gradient steps; one trial per task, the policy state kept "
            "across its episodes; column k is episode k of the trial"
        )
    return "ppo: the multi-task policy fine-tuned by SGD steps"


def adapt_eval_markdown(results: dict) -> str:
    """The ``adapt_eval.json`` content as a markdown report (header and tables)."""
    in_context = results.get("x_offset", 0) == 1
    per = "per task" if in_context else "per task and step"
    unit = "trials" if in_context else "episodes"
    lines = [
        f"# Adaptation on {results['family']} ({results['split']} tasks)",
        "",
        f"{results['num_tasks']} tasks x {len(results['seeds'])} seeds; {per} "
        f"{results['episodes']} {unit} of {results['episode_steps']} steps. "
        f"Env steps of training: {results['env_steps']}. Mean ± 95% CI over (task, seed) "
        "pairs.",
        "",
    ]
    if results.get("adaptation"):
        lines.append(f"- adaptation: {results['adaptation']}")
    if results.get("finetune"):
        ft = results["finetune"]
        lines.append(
            f"- fine-tuning (multitask_finetune, scratch): SGD on the {ft['objective']} "
            f"surrogate, lr {ft['inner_lr']:g}"
        )
    if {"ucb1", "thompson"} & set(results["methods"]):
        lines.append(
            "- ucb1, thompson: classic bandit algorithms playing the same trials (statistics "
            "kept across episodes); expected return of the arms pulled"
        )
    first = results["methods"][next(iter(results["methods"]))]
    table = curves_markdown(
        results["methods"],
        first["steps"],
        results.get("x", "step"),
        with_success=results.get("reports_success", True),
        offset=results.get("x_offset", 0),
    )
    return "\n".join(lines) + "\n\n" + table
