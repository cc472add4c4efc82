#!/usr/bin/env python
"""MAML / FOMAML on Meta-World ML1 (default ``reach-v3``): meta-test success before and after
one adaptation step on held-out goal positions, next to a fine-tuned multi-task PPO policy and
the meta run's own initialisation.

    python experiments/maml_ml1.py --algo maml --kind gru --iterations 20
    python experiments/maml_ml1.py --algo fomaml --kind mamba --minutes 30
    python experiments/maml_ml1.py --quick --out /tmp/smoke                  # smoke test

The documented CPU budget (one core): episodes of 150 steps (Meta-World's original
``max_path_length``; v3 uses 500), meta-batch 10 goals, 10 support and 10 query episodes per goal
(2 envs x 5 consecutive episodes each, so a meta-batch builds 20 MuJoCo envs, ~0.2 s each), one
inner VPG step (LVC surrogate) at lr 0.1, linear baseline, Adam outer step at 3e-3. The same
three stages as ``maml_nav2d.py`` (meta-training, the multi-task PPO baseline on all 50 train
goals with the same env-step budget, adaptation evaluation on ``--eval-tasks`` of the 50 test goals
x ``--eval-seeds`` seeds, 10 support episodes per step). Success is Meta-World's: success at any
step of the episode.

Writes ``experiments/results/maml_ml1_<env>_<algo>_<kind>_s<seed>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from maml_nav2d import add_common_args, meta_config, run_experiment

from metarl import runner
from metarl.tracking import LoggingConfig

ITERATIONS = {"mamba": 20, "gru": 20}
"""Default outer iterations (see the report for the per-iteration time)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--env", default="reach-v3", help="Meta-World ML1 environment")
    ap.add_argument("--episode-steps", type=int, default=150, help="episode length")
    ap.add_argument("--meta-batch", type=int, default=10, help="goals per outer iteration")
    ap.add_argument("--envs-per-task", type=int, default=2, help="envs per goal")
    ap.add_argument("--episodes-per-env", type=int, default=5, help="consecutive episodes per env")
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--eval-tasks", type=int, default=20, help="held-out goals (of 50)")
    ap.add_argument("--eval-seeds", type=int, default=2, help="rollout seeds per goal")
    ap.add_argument("--runs", type=Path, default=Path("runs/maml_ml1"), help="run dirs root")
    args = ap.parse_args()
    if args.iterations is None and args.minutes is None:
        args.iterations = ITERATIONS[args.kind]
    if args.quick:  # smoke test: 2 goals, short episodes, 2 iterations
        args.episode_steps, args.meta_batch, args.envs_per_task, args.episodes_per_env = 30, 2, 1, 2
        args.eval_tasks, args.eval_seeds = 2, 2
        args.iterations = args.iterations if args.minutes is not None else 2
    num_steps = args.episodes_per_env * args.episode_steps
    meta = meta_config(
        args,
        meta_batch_size=args.meta_batch,
        episodes_per_task=args.envs_per_task,
        num_steps=num_steps,
        inner_lr=args.inner_lr,
    )
    eval_kw: dict[str, Any] = dict(
        steps=1, episodes=args.envs_per_task, seeds=args.eval_seeds, num_tasks=args.eval_tasks
    )
    cfg = runner.TrainConfig(
        algo="maml",
        family=f"metaworld-ml1:{args.env}",
        max_episode_steps=args.episode_steps,
        seed=args.seed,
        policy=runner.PolicyConfig(
            kind=args.kind,
            d_model=args.d_model,
            n_layers=args.layers,
            encoder_hidden=2 * args.d_model,
        ),
        meta=meta,
        run=runner.RunConfig(
            root=str(args.runs),
            name=f"{args.env}-{args.algo}-{args.kind}-s{args.seed}",
            checkpoint_every=2,
            threads=args.threads,
            time_limit_minutes=args.minutes,
        ),
        logging=LoggingConfig(wandb="disabled", progress=args.progress),
        eval=runner.EvalConfig(tasks=args.eval_tasks, split="test", seed=12345),
    )
    # every train goal gets its own env (ML1 has 50), one episode per env per PPO iteration
    ppo = {"num_envs": 2 if args.quick else 50, "num_steps": args.episode_steps}
    stem = f"maml_ml1_{args.env.replace('-', '_')}_{args.algo}_{args.kind}_s{args.seed}"
    run_experiment(cfg, args, stem, eval_kw, multitask_ppo=ppo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
