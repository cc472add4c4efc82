#!/usr/bin/env python
"""Curiosity on a sparse-reward maze: RND and ICM against no bonus, same budget, 3 seeds.

    python experiments/skills_curiosity.py              # 100k steps per run, 9 runs (~15 min)
    python experiments/skills_curiosity.py --quick      # smoke test, < 1 min

PPO (``metarl``) with a GRU SequencePolicy on :class:`skills.envs.GridMaze` (a seeded perfect
maze of 8 x 8 cells, 127 free squares; start top-left, reward 1 only at the bottom-right goal,
200-step episodes). The bonus is added by :class:`skills.intrinsic.IntrinsicRewardVecEnv`
(normalised, weight ``--coef``). Reported per method, as mean ± std over seeds: distinct squares
visited during training (coverage), the fraction of training episodes that reached the goal, and
coverage over training. Writes ``experiments/results/skills_curiosity.json`` (``_quick`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_io import run_metadata

import ssm
from metarl.ppo import PPOConfig
from skills.envs import make_maze_vec_env, maze_coverage
from skills.intrinsic import IntrinsicRewardVecEnv, RewardTerm, make_curiosity, train_ppo_intrinsic
from ssm.util import write_json_atomic

HERE = Path(__file__).resolve().parent
METHODS = ("none", "rnd", "icm")


def ppo_config(args: argparse.Namespace, seed: int) -> PPOConfig:
    return PPOConfig(
        total_steps=args.total_steps,
        num_envs=args.num_envs,
        num_steps=args.num_steps,
        learning_rate=args.lr,
        ent_coef=args.ent_coef,
        seed=seed,
    )


def run(method: str, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    base = make_maze_vec_env(args.num_envs, cells=args.cells, max_episode_steps=args.episode_steps)
    obs_dim = int(np.prod(base.single_observation_space.shape))
    terms = []
    if method != "none":
        plugin = make_curiosity(method, obs_dim, base.single_action_space, seed=seed)
        terms.append(RewardTerm(method, plugin, args.coef))
    envs = IntrinsicRewardVecEnv(base, terms, extrinsic_coef=1.0)
    policy = ssm.SequencePolicy(
        base.single_observation_space, base.single_action_space, kind="gru", d_model=32, n_layers=1
    )
    cfg = ppo_config(args, seed)
    successes = []

    def track(row: dict) -> None:
        row["coverage"], _ = maze_coverage(base)
        successes.append((row["extrinsic_return"], row["episodes"]))

    t0 = time.perf_counter()
    history = train_ppo_intrinsic(policy, envs, cfg, after_iteration=track)
    covered, free = maze_coverage(base)
    episodes = sum(n for _, n in successes)
    reached = sum(r * n for r, n in successes if n)  # the reward is 1 per successful episode
    out = {
        "method": method,
        "seed": seed,
        "coverage": covered,
        "free_cells": free,
        "coverage_fraction": covered / free,
        "episodes": int(episodes),
        "goal_rate": reached / episodes if episodes else 0.0,
        "seconds": time.perf_counter() - t0,
        "coverage_curve": [(row["global_step"], row["coverage"]) for row in history],
    }
    print(
        f"{method:5s} seed {seed}: coverage {covered}/{free}, goal rate {out['goal_rate']:.3f} "
        f"({out['seconds']:.0f} s)",
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--total-steps", type=int, default=100_000)
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--num-steps", type=int, default=128)
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--episode-steps", type=int, default=200)
    ap.add_argument("--coef", type=float, default=0.1, help="weight of the normalised bonus")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ent-coef", type=float, default=0.01)
    ap.add_argument("--quick", action="store_true", help="2 iterations per run: a smoke test")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}")
    if args.quick:
        args.total_steps = 2 * args.num_envs * args.num_steps
    out = args.out or HERE / "results" / f"skills_curiosity{'_quick' if args.quick else ''}.json"
    torch.set_num_threads(1)

    runs = [run(m, s, args) for m in methods for s in range(1, args.seeds + 1)]
    summary = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        cov = np.array([r["coverage"] for r in rs], dtype=float)
        goal = np.array([r["goal_rate"] for r in rs])
        summary[m] = {
            "coverage_mean": float(cov.mean()),
            "coverage_std": float(cov.std(ddof=1)) if len(cov) > 1 else 0.0,
            "goal_rate_mean": float(goal.mean()),
            "goal_rate_std": float(goal.std(ddof=1)) if len(goal) > 1 else 0.0,
        }
        print(
            f"{m:5s}: coverage {summary[m]['coverage_mean']:.1f} ± {summary[m]['coverage_std']:.1f}"
            f" of {rs[0]['free_cells']}, goal rate {summary[m]['goal_rate_mean']:.3f} ± "
            f"{summary[m]['goal_rate_std']:.3f}"
        )
    payload = {
        **run_metadata(),
        "quick": args.quick,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "ppo": {k: v for k, v in dataclasses.asdict(ppo_config(args, 0)).items() if k != "seed"},
        "summary": summary,
        "runs": runs,
    }
    write_json_atomic(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
