#!/usr/bin/env python
"""PPO sanity run: an SSM policy learns CartPole-v1 (target: mean return >= 475).

    python experiments/ppo_cartpole.py                      # Mamba, default budget
    python experiments/ppo_cartpole.py --kind s5 --total-steps 150000

Trains with :func:`metarl.ppo.train_ppo`, then evaluates the greedy policy on 20 fresh episodes.
Writes ``experiments/results/ppo_cartpole_<kind>.json`` (atomically): the command, commit,
machine, config, per-iteration metrics and the evaluation returns.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from results_io import run_metadata

import ssm
from metarl.ppo import PPOConfig, evaluate_returns, train_ppo
from ssm.util import write_json_atomic

HERE = Path(__file__).resolve().parent


def make_envs(n: int) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "CartPole-v1",
        num_envs=n,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="mamba", choices=sorted(ssm.KINDS))
    ap.add_argument("--total-steps", type=int, default=PPOConfig.total_steps)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--lr", type=float, default=PPOConfig.learning_rate)
    ap.add_argument("--ent-coef", type=float, default=PPOConfig.ent_coef)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    cfg = PPOConfig(
        total_steps=args.total_steps, seed=args.seed, learning_rate=args.lr, ent_coef=args.ent_coef
    )
    envs = make_envs(cfg.num_envs)
    policy = ssm.SequencePolicy(
        envs.single_observation_space,
        envs.single_action_space,
        kind=args.kind,
        d_model=args.d_model,
        n_layers=2,
    )
    t0 = time.perf_counter()

    def log(row):
        if row.iteration % 10 == 0 or row.iteration == 1:
            print(
                f"it {row.iteration:4d} step {row.global_step:7d} return {row.episodic_return:7.1f}"
                f" kl {row.approx_kl:.4f} clip {row.clip_fraction:.3f}"
                f" ev {row.explained_variance:.2f} sps {row.steps_per_second:.0f}",
                flush=True,
            )

    history = train_ppo(policy, envs, cfg, log=log)
    train_s = time.perf_counter() - t0
    eval_returns = evaluate_returns(policy, make_envs(4), episodes=20, seed=10_000 + args.seed)
    mean_ret = float(np.mean(eval_returns))
    print(
        f"greedy evaluation over {len(eval_returns)} episodes: mean return {mean_ret:.1f} "
        f"(target >= 475) in {train_s:.0f} s of training"
    )
    out = args.out or HERE / "results" / f"ppo_cartpole_{args.kind}.json"
    payload = {
        **run_metadata(),
        "kind": args.kind,
        "d_model": args.d_model,
        "config": asdict(cfg),
        "train_seconds": train_s,
        "eval_returns": eval_returns,
        "eval_mean_return": mean_ret,
        "target": 475,
        "passed": mean_ret >= 475,
        "history": [row.as_dict() for row in history],
    }
    write_json_atomic(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
