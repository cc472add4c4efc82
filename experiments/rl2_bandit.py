#!/usr/bin/env python
"""RL² on Bernoulli bandits: meta-train an in-context SSM policy, compare regret with classics.

    python experiments/rl2_bandit.py                        # Mamba, k=5, horizon 100
    python experiments/rl2_bandit.py --total-steps 2000000 --kind gru

Meta-trains with :func:`metarl.rl2.train_rl2` on the family's train split, then plays one trial
(``horizon`` pulls) on each of ``--eval-tasks`` held-out test bandits and reports the cumulative
(pseudo-)regret ``Σ_t max_a p_a - p_{a_t}`` as mean ± 95% CI over tasks, against a random policy,
UCB1 and Thompson sampling (Beta(1, 1) prior) played on the same tasks in the same script.
Writes ``experiments/results/rl2_bandit_<kind>.json`` (atomically).
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
from metarl.tasks.bandit import CLASSIC_PLAYERS
from metarl.tasks.bandit import pseudo_regret as regret

HERE = Path(__file__).resolve().parent


def ci95(x: np.ndarray) -> tuple[float, float]:
    return float(np.mean(x)), float(1.96 * np.std(x, ddof=1) / np.sqrt(len(x)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="mamba", choices=sorted(ssm.KINDS))
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--total-steps", type=int, default=3_000_000)
    ap.add_argument("--num-envs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ent-coef", type=float, default=0.01)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--eval-tasks", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    family = make_family("bandit", k=args.k, horizon=args.horizon)
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
        ent_coef=args.ent_coef,
        gamma=args.gamma,
        seed=args.seed,
    )
    t0 = time.perf_counter()

    def log(row):
        if row.iteration % 20 == 0 or row.iteration == 1:
            print(
                f"it {row.iteration:5d} step {row.global_step:8d} trial return "
                f"{row.episodic_return:6.2f} entropy {row.entropy:.3f} kl {row.approx_kl:.4f}"
                f" sps {row.steps_per_second:.0f}",
                flush=True,
            )

    history = train_rl2(policy, family, cfg, log=log)
    train_s = time.perf_counter() - t0

    tasks = family.sample(args.eval_tasks, split="test", seed=12345)
    probs = [np.asarray(t.param("probs")) for t in tasks]
    ev = evaluate_trials(policy, family, tasks, episodes_per_trial=1, seed=777)
    results = {"rl2_" + args.kind: np.array([regret(p, a) for p, a in zip(probs, ev["actions"])])}
    rng = np.random.default_rng(777)
    for name, play in CLASSIC_PLAYERS.items():
        results[name] = np.array([regret(p, play(p, args.horizon, rng)) for p in probs])
    summary = {name: dict(zip(("mean", "ci95"), ci95(r))) for name, r in results.items()}
    for name, s in summary.items():
        print(f"{name:12s} cumulative regret {s['mean']:6.2f} ± {s['ci95']:.2f}")

    out = args.out or HERE / "results" / f"rl2_bandit_{args.kind}.json"
    payload = {
        **run_metadata(),
        "config": asdict(cfg),
        "k": args.k,
        "horizon": args.horizon,
        "kind": args.kind,
        "train_seconds": train_s,
        "eval_tasks": args.eval_tasks,
        "regret": summary,
        "history": [row.as_dict() for row in history],
    }
    write_json_atomic(out, payload)
    print(f"wrote {out} ({train_s:.0f} s of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
