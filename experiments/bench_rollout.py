#!/usr/bin/env python
"""Rollout-engine throughput against the bare vector environments, in one run.

    python experiments/bench_rollout.py                 # nav2d and Meta-World reach-v3, 16 envs
    python experiments/bench_rollout.py --families nav2d --num-envs 16 --steps 512

For each family, interleaved ``--repeats`` times: (a) the bare ``VectorEnv`` stepping random
actions (sampled in one batch call), (b) :class:`metarl.Rollout` collecting with a Mamba
:class:`ssm.SequencePolicy` (d_model 64, 2 layers): policy step, sampling, state bookkeeping and
trajectory recording. overhead = 1 - sps(rollout) / sps(bare); the issue's target is <= 25%.
Writes ``experiments/results/bench_rollout.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_io import run_metadata

import ssm
from metarl import Rollout, make_family
from ssm.util import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent


def bare_sps(envs, steps: int, seed: int) -> float:
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    t = time.perf_counter()
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    return steps * envs.num_envs / (time.perf_counter() - t)


def rollout_sps(rollout: Rollout, steps: int) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        rollout.collect(steps)
    return steps * rollout.envs.num_envs / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="nav2d,metaworld-ml1:reach-v3")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=256, help="vector steps per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kind", default="mamba")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_rollout.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    results = []
    for spec in args.families.split(","):
        family = make_family(spec)
        tasks = family.sample(args.num_envs, seed=0)
        envs = family.make_vector_env(tasks, seed=0)
        policy = ssm.SequencePolicy(
            family.observation_space, family.action_space, kind=args.kind, d_model=64, n_layers=2
        )
        rollout = Rollout(policy, envs, generator=torch.Generator().manual_seed(0), seed=0)
        rollout_sps(rollout, 16)  # warm-up (kernel build, first resets)
        bare_sps(envs, 16, 0)
        bare, roll = [], []
        for r in range(args.repeats):
            bare.append(bare_sps(envs, args.steps, seed=r))
            rollout.new_trial(seed=r)
            roll.append(rollout_sps(rollout, args.steps))
        b, o = statistics.median(bare), statistics.median(roll)
        results.append(
            {
                "family": spec,
                "num_envs": args.num_envs,
                "bare_sps": b,
                "rollout_sps": o,
                "overhead": 1 - o / b,
                "bare_samples": bare,
                "rollout_samples": roll,
                "target_overhead": 0.25,
                "passed": 1 - o / b <= 0.25,
            }
        )
        envs.close()
        print(
            f"{spec:28s} bare {b:9.0f} steps/s  rollout {o:9.0f} steps/s  "
            f"overhead {100 * (1 - o / b):5.1f}%",
            flush=True,
        )

    meta = {
        **run_metadata(),
        "policy": {"kind": args.kind, "d_model": 64, "n_layers": 2},
        "steps_per_measurement": args.steps,
        "repeats": args.repeats,
    }
    commit = meta["commit"]
    write_json_atomic(args.out, {**meta, "results": results})
    lines = [
        f"# Rollout throughput vs bare vector envs ({args.num_envs} envs)",
        "",
        f"- command: `{meta['command']}`",
        f"- commit: `{commit}`",
        f"- machine: {meta['machine']}",
        "",
        "| family | bare steps/s | rollout steps/s | overhead | target <= 25% |",
        "|---|---:|---:|---:|:---:|",
    ]
    lines += [
        f"| {r['family']} | {r['bare_sps']:.0f} | {r['rollout_sps']:.0f} | "
        f"{100 * r['overhead']:.1f}% | {'PASS' if r['passed'] else 'FAIL'} |"
        for r in results
    ]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0 if np.isfinite([r["overhead"] for r in results]).all() else 2


if __name__ == "__main__":
    sys.exit(main())
