#!/usr/bin/env python
"""RL² on nav2d: does the in-context policy do better in its second episode of a trial?

    python experiments/rl2_nav2d.py                         # Mamba, 2 episodes per trial

Meta-trains with :func:`metarl.rl2.train_rl2` (trials of ``--episodes`` episodes of one goal; the
state persists across them), then plays one trial on each of ``--eval-tasks`` held-out goals and
reports each episode's return as mean ± 95% CI over tasks, plus the paired difference
(episode 2 - episode 1). Writes ``experiments/results/rl2_nav2d_<kind>.json`` (atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from results_io import run_metadata, write_json_atomic

import ssm
from metarl import make_family
from metarl.rl2 import RL2Config, evaluate_trials, train_rl2

HERE = Path(__file__).resolve().parent


def ci95(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "ci95": float(1.96 * np.std(x, ddof=1) / np.sqrt(len(x)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="mamba", choices=sorted(ssm.KINDS))
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--total-steps", type=int, default=1_000_000)
    ap.add_argument("--num-envs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--eval-tasks", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    family = make_family("nav2d")
    policy = ssm.SequencePolicy(
        family.observation_space,
        family.action_space,
        kind=args.kind,
        d_model=args.d_model,
        n_layers=2,
        in_context=True,
    )
    cfg = RL2Config(
        total_steps=args.total_steps,
        num_envs=args.num_envs,
        learning_rate=args.lr,
        episodes_per_trial=args.episodes,
        seed=args.seed,
        ent_coef=0.0,
    )
    t0 = time.perf_counter()

    def log(row):
        if row.iteration % 20 == 0 or row.iteration == 1:
            print(
                f"it {row.iteration:5d} step {row.global_step:8d} trial return "
                f"{row.episodic_return:8.2f} kl {row.approx_kl:.4f}"
                f" sps {row.steps_per_second:.0f}",
                flush=True,
            )

    history = train_rl2(policy, family, cfg, log=log)
    train_s = time.perf_counter() - t0
    tasks = family.sample(args.eval_tasks, split="test", seed=4242)
    ev = evaluate_trials(
        policy, family, tasks, episodes_per_trial=args.episodes, seed=99, deterministic=True
    )
    per_ep = ev["episode_returns"]  # (tasks, episodes)
    summary = {f"episode_{i + 1}": ci95(per_ep[:, i]) for i in range(args.episodes)}
    summary["episode_2_minus_1"] = ci95(per_ep[:, 1] - per_ep[:, 0])
    for name, s in summary.items():
        print(f"{name:18s} {s['mean']:8.2f} ± {s['ci95']:.2f}")

    out = args.out or HERE / "results" / f"rl2_nav2d_{args.kind}.json"
    payload = {
        **run_metadata(),
        "config": asdict(cfg),
        "kind": args.kind,
        "train_seconds": train_s,
        "eval_tasks": args.eval_tasks,
        "returns": summary,
        "history": [row.as_dict() for row in history],
    }
    write_json_atomic(out, payload)
    print(f"wrote {out} ({train_s:.0f} s of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
