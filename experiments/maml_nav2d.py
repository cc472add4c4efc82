#!/usr/bin/env python
"""MAML / FOMAML on 2D navigation (Finn et al., 2017): does one gradient step on 20 trajectories
adapt a meta-learned SSM/GRU policy to a held-out goal, and better than fine-tuning a multi-task
policy with the same step?

    python experiments/maml_nav2d.py --algo maml --kind mamba --iterations 40
    python experiments/maml_nav2d.py --algo fomaml --kind gru --minutes 8
    python experiments/maml_nav2d.py --algo maml --kind gru --quick --out /tmp/smoke   # smoke test

The MAML-RL setup: goals in [-0.5, 0.5]² (train/test: a checkerboard split), 100-step episodes,
20 trajectories per task for support and for query, meta-batch 20, one inner VPG step (LVC
surrogate) with inner lr 0.1, linear-feature baseline, Monte-Carlo returns. The outer step is
Adam at 3e-3 by default (``--outer trpo`` is Finn's MAML-TRPO; on one CPU core it costs ~6x
more per iteration, see the report). Adam at 3e-3 moves the adapted policies by a KL of about 0.01
per iteration, the same as TRPO's ``max_kl``; at 1e-3 it is about 0.001.

Three stages, each through the runner (run directories with checkpoints under ``--runs``; a
killed stage resumes with ``--run RUN_DIR``):

1. meta-training (``metarl`` algo ``maml``) for ``--iterations`` outer iterations or
   ``--minutes`` of wall time;
2. the multi-task baseline: PPO on the train goals (one per env, not in-context, same
   architecture and seed) for the same number of env steps as meta-training; reused across
   ``--algo`` when the budget matches (``--runs``/multitask), or given with ``--multitask``;
3. :func:`metarl.few_shot.adapt_evaluate` on ``--eval-tasks`` held-out goals x ``--eval-seeds``
   seeds: the return before and after one step for the meta-learned policy, the fine-tuned
   multi-task policy and the meta run's own initialisation ("scratch"), all on the same goals,
   start states, env seeds and support size (20 episodes), with 95% CIs over (goal, seed) pairs.

Writes ``experiments/results/maml_nav2d_<algo>_<kind>_s<seed>.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import run_metadata

from metarl import few_shot, runner
from metarl.config import config_to_dict
from metarl.meta import MetaConfig
from metarl.run_dir import RunDir
from metarl.tracking import LoggingConfig
from ssm.util import mean_ci, write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
ITERATIONS = {"mamba": 40, "gru": 80}
"""Default outer iterations per kind: about 8 minutes of meta-training on one core (timed at
10-13 s/it for Mamba and 4.7-6.5 s/it for the GRU, d_model 32, one layer, on a shared
machine)."""


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The flags shared with ``maml_ml1.py``."""
    ap.add_argument("--algo", default="maml", choices=["maml", "fomaml"])
    ap.add_argument("--kind", default="mamba", choices=["mamba", "gru"])
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, default=None, help="outer iterations")
    budget.add_argument(
        "--minutes", type=float, default=None, help="wall-clock budget of meta-training"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=1, help="sequence layers (1-2)")
    ap.add_argument("--outer", default="adam", choices=["adam", "trpo"])
    ap.add_argument("--outer-lr", type=float, default=3e-3, help="Adam meta learning rate")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--multitask", type=Path, default=None, help="reuse this PPO run dir")
    ap.add_argument("--run", type=Path, default=None, help="continue/evaluate this meta run dir")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    ap.add_argument("--quick", action="store_true", help="tiny budget: a smoke test")
    ap.add_argument("--out", type=Path, default=None, help="results folder")


def run_experiment(
    cfg: runner.TrainConfig,
    args: argparse.Namespace,
    stem: str,
    eval_kw: dict[str, Any],
    multitask_ppo: dict[str, Any] | None = None,
) -> dict:
    """Meta-train (or resume ``args.run``), get the multi-task baseline, evaluate adaptation with
    baselines, and write ``<out>/<stem>.json`` and ``.md``; returns the JSON payload."""
    torch.set_num_threads(args.threads)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.run is None:
        run = runner.train(cfg)
    else:
        run = RunDir.open(args.run)
        status = json.loads((run.path / runner.STATUS_FILE).read_text())
        time_sliced = (status.get("message") or "").startswith("time limit")
        if status["status"] != "finished" and not time_sliced:
            run = runner.resume(run.path)
        cfg = run.load_config(runner.TrainConfig)  # the run's own config, not the flags
    timing["meta_train_s"] = time.perf_counter() - t0
    rows = run.read_metrics()
    state = run.load_checkpoint("latest")["trainer"]
    iterations, env_steps = int(state["iteration"]), int(state["global_step"])
    timing["seconds_per_iteration"] = float(state["elapsed"]) / max(iterations, 1)
    print(
        f"meta-training: {iterations} iterations, {env_steps} env steps, "
        f"{timing['seconds_per_iteration']:.2f} s/iteration; run dir {run.path}",
        flush=True,
    )

    t0 = time.perf_counter()
    if args.multitask is not None:
        multitask = RunDir.open(args.multitask)
    else:
        root = Path(cfg.run.root) / "multitask"
        multitask = runner.find_or_train_multitask(run, root=root, ppo=multitask_ppo)
    timing["multitask_s"] = time.perf_counter() - t0
    print(f"multi-task baseline: {multitask.path}", flush=True)

    t0 = time.perf_counter()
    results = few_shot.adapt_evaluate(run, baselines=True, multitask=multitask.path, **eval_kw)
    timing["adapt_eval_s"] = time.perf_counter() - t0

    meta = cfg.meta.algo
    curves = {k: np.asarray(v["returns"]) for k, v in results["curves"].items()}
    steps = results["methods"][meta]["steps"]
    last = len(steps) - 1
    summary = {
        name: {
            "return_before": results["methods"][name]["return"][0],
            f"return_after_{steps[last]}": results["methods"][name]["return"][last],
            "gain": results["methods"][name]["improvement"][last],
            "success_before": results["methods"][name]["success"][0],
            f"success_after_{steps[last]}": results["methods"][name]["success"][last],
        }
        for name in results["methods"]
    }
    # paired by (seed, goal): the same goal, env seeds and support budget for both methods
    summary[f"{meta}_minus_multitask_after_{steps[last]}"] = mean_ci(
        curves[meta][:, :, last] - curves["multitask_finetune"][:, :, last]
    )
    summary[f"{meta}_gain_minus_multitask_gain"] = mean_ci(
        (curves[meta][:, :, last] - curves[meta][:, :, 0])
        - (curves["multitask_finetune"][:, :, last] - curves["multitask_finetune"][:, :, 0])
    )
    payload = {
        **run_metadata(),
        "config": config_to_dict(cfg),
        "meta_run": str(run.path),
        "multitask_run": str(multitask.path),
        "meta_iterations": iterations,
        "env_steps": results["env_steps"],
        "timing": timing,
        "summary": summary,
        "adapt_eval": results,
        "training_curve": [
            {k: r[k] for k in ("iteration", "global_step", "pre_return", "post_return", "kl")}
            for r in rows
        ],
    }
    out = args.out or HERE / "results"
    write_json_atomic(out / f"{stem}.json", payload)
    md = [
        f"# {stem}",
        "",
        f"`{payload['command']}` at {payload['commit']}",
        "",
        f"Meta-training: {iterations} iterations ({env_steps} env steps, "
        f"{timing['seconds_per_iteration']:.2f} s/iteration, {timing['meta_train_s']:.0f} s in "
        f"this process); multi-task PPO: {results['env_steps'].get('multitask')} env steps.",
        "",
        "| comparison | mean ± 95% CI (Student-t) |",
        "|---|---|",
    ]
    for key in (f"{meta}_minus_multitask_after_{steps[last]}", f"{meta}_gain_minus_multitask_gain"):
        md.append(f"| {key} | {summary[key]['mean']:.3f} ± {summary[key]['ci95']:.3f} |")
    comparisons = md[-2:]
    md += ["", few_shot.adapt_eval_markdown(results)]
    write_text_atomic(out / f"{stem}.md", "\n".join(md))
    print(few_shot.adapt_eval_markdown(results))
    print("\n".join(["| comparison | mean ± 95% CI (Student-t) |", "|---|---|", *comparisons]))
    print(f"wrote {out / stem}.json and .md", flush=True)
    return payload


def meta_config(args: argparse.Namespace, **overrides: Any) -> MetaConfig:
    iterations = 10**6 if args.minutes is not None else args.iterations
    base = dict(
        algo=args.algo,
        inner_lr=0.1,
        inner_steps=1,
        inner_objective="lvc",
        meta_batch_size=20,
        episodes_per_task=20,
        baseline="linear",
        gae_lambda=1.0,
        gamma=0.99,
        outer=args.outer,
        outer_lr=args.outer_lr,
        max_kl=0.01,
        trpo_fisher="first_order",
        iterations=iterations,
        seed=args.seed,
    )
    return MetaConfig(**(base | overrides))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--eval-tasks", type=int, default=40, help="held-out goals")
    ap.add_argument("--eval-seeds", type=int, default=3, help="rollout seeds per goal")
    ap.add_argument("--runs", type=Path, default=Path("runs/maml_nav2d"), help="run dirs root")
    args = ap.parse_args()
    if args.iterations is None and args.minutes is None:
        args.iterations = ITERATIONS[args.kind]
    family_kwargs: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    eval_kw = dict(steps=1, episodes=20, seeds=args.eval_seeds, num_tasks=args.eval_tasks)
    if args.quick:  # smoke test: short episodes, tiny batches
        family_kwargs = {"max_episode_steps": 10}
        overrides = dict(meta_batch_size=3, episodes_per_task=4)
        args.iterations = args.iterations if args.minutes is not None else 2
        eval_kw = dict(steps=1, episodes=4, seeds=2, num_tasks=4)
    cfg = runner.TrainConfig(
        algo="maml",
        family="nav2d",
        family_kwargs=family_kwargs,
        seed=args.seed,
        policy=runner.PolicyConfig(
            kind=args.kind,
            d_model=args.d_model,
            n_layers=args.layers,
            encoder_hidden=2 * args.d_model,
        ),
        meta=meta_config(args, **overrides),
        run=runner.RunConfig(
            root=str(args.runs),
            name=f"{args.algo}-{args.kind}-s{args.seed}",
            checkpoint_every=5,
            threads=args.threads,
            time_limit_minutes=args.minutes,
        ),
        logging=LoggingConfig(wandb="disabled", progress=args.progress),
        eval=runner.EvalConfig(tasks=eval_kw["num_tasks"], split="test", seed=12345),
    )
    stem = f"maml_nav2d_{args.algo}_{args.kind}_s{args.seed}"
    run_experiment(cfg, args, stem, eval_kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
