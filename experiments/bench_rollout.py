#!/usr/bin/env python
"""Rollout-engine throughput against the bare vector environments, in one run.

    python experiments/bench_rollout.py    # nav2d, bandit, cartpole: 16, 64, 256 envs; reach-v3: 16
    python experiments/bench_rollout.py --families nav2d --num-envs 16 --steps 512
    python experiments/bench_rollout.py --threads 1 --repeats 3   # a shared 2-core machine
    python experiments/bench_rollout.py --families metaworld-ml1:reach-v3 --num-envs 16

For each family and env count, interleaved ``--repeats`` times (env steps per second, all
sub-envs counted):

- bare sync: gymnasium's ``SyncVectorEnv`` over one env per task (``batched=False``, the old
  default), stepping random actions sampled in one batch call;
- bare batched: the family's natively batched env (``make_vector_env``'s default), same actions;
- rollout: :class:`metarl.Rollout` over the default env with a Mamba :class:`ssm.SequencePolicy`
  (d_model 64, 2 layers): policy step, sampling, bookkeeping and trajectory recording;
- engine only: the same Rollout with a policy that costs nothing (fixed zero outputs), i.e. the
  env plus the engine's own bookkeeping.

overhead = 1 - sps(rollout) / sps(bare batched); the issue's target is <= 25% on nav2d at 16
envs. A separate instrumented rollout splits the time per vector step into the env (``step``),
the policy (``step``, ``sample``, ``log_prob``, truncation bootstraps and the last value) and the
rest (the engine's bookkeeping, tensor conversions, recording). Writes
``experiments/results/bench_rollout.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from results_io import run_metadata
from torch import nn

import ssm
from metarl import Rollout, make_family
from metarl.tasks import MissingExtraError
from metarl.tasks.batched import BatchedTaskEnv
from ssm.policy import PolicyOutput
from ssm.util import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent


class NullPolicy(nn.Module):
    """Acts with zeros and values 0 at (almost) no cost: a Rollout with it times the engine."""

    def __init__(self, action_space: gym.Space):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.in_context = False
        discrete = isinstance(action_space, gym.spaces.Discrete)
        self.action_shape = () if discrete else tuple(action_space.shape)
        self.action_dtype = torch.int64 if discrete else torch.float32

    def initial_state(self, batch_size: int, device=None, dtype=None):
        return (torch.zeros(batch_size, 1),)

    def step(self, obs, state, reset=None, **context):
        n = obs.shape[0]
        return PolicyOutput(torch.zeros(n, 1), torch.zeros(n)), state

    def sample(self, out: PolicyOutput, generator=None):
        return torch.zeros((out.value.shape[0], *self.action_shape), dtype=self.action_dtype)

    mode = sample

    def log_prob(self, out: PolicyOutput, action):
        return out.value


class Stopwatch:
    """Wraps methods of an object to add their wall time to ``seconds``."""

    def __init__(self, obj, names: tuple[str, ...]):
        self.seconds = 0.0
        for name in names:
            setattr(obj, name, self._timed(getattr(obj, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def bare_sps(envs, steps: int, seed: int) -> float:
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(steps)]
    t = time.perf_counter()
    for a in actions:
        envs.step(a)
    return steps * envs.num_envs / (time.perf_counter() - t)


def rollout_sps(rollout: Rollout, steps: int, seed: int) -> float:
    rollout.new_trial(seed=seed)
    t = time.perf_counter()
    with torch.inference_mode():
        rollout.collect(steps)
    return steps * rollout.envs.num_envs / (time.perf_counter() - t)


def split_us(family, tasks, policy, steps: int, seed: int) -> dict[str, float]:
    """Microseconds per vector step in the env, the policy and the rest, from one instrumented
    rollout (the wrappers add ~1 µs per call to the measured parts)."""
    envs = family.make_vector_env(tasks, seed=0)
    rollout = Rollout(policy, envs, generator=torch.Generator().manual_seed(seed))
    rollout.new_trial(seed=seed)
    env_clock = Stopwatch(envs, ("step",))
    policy_clock = Stopwatch(policy, ("step", "sample", "log_prob"))
    t = time.perf_counter()
    with torch.inference_mode():
        rollout.collect(steps)
    total = time.perf_counter() - t
    for name in ("step", "sample", "log_prob"):
        delattr(policy, name)  # back to the class's methods
    envs.close()
    per = 1e6 / steps
    env, pol = env_clock.seconds * per, policy_clock.seconds * per
    return {"env": env, "policy": pol, "bookkeeping": total * per - env - pol}


def measure(spec: str, num_envs: int, args) -> dict:
    family = make_family(spec)
    tasks = family.sample(num_envs, seed=0)
    sync = family.make_vector_env(tasks, seed=0, batched=False)
    default = family.make_vector_env(tasks, seed=0)
    batched = default if isinstance(default, BatchedTaskEnv) else None
    engine_envs = family.make_vector_env(tasks, seed=0)
    policy = ssm.SequencePolicy(
        family.observation_space, family.action_space, kind=args.kind, d_model=64, n_layers=2
    )
    rollout = Rollout(policy, default, generator=torch.Generator().manual_seed(0), seed=0)
    fused_envs = family.make_vector_env(tasks, seed=0)
    fused = Rollout(
        policy, fused_envs, generator=torch.Generator().manual_seed(0), seed=0, fused_step=True
    )
    engine = Rollout(NullPolicy(family.action_space), engine_envs, seed=0)
    rollout_sps(rollout, 16, 0)  # warm-up (kernel build, first resets)
    rollout_sps(fused, 16, 0)
    rollout_sps(engine, 16, 0)
    samples: dict[str, list] = {
        "sync": [],
        "batched": [],
        "rollout": [],
        "fused": [],
        "engine": [],
        "split": [],
    }
    for r in range(args.repeats):
        samples["sync"].append(bare_sps(sync, args.steps, seed=r))
        if batched is not None:
            samples["batched"].append(bare_sps(batched, args.steps, seed=r))
        samples["rollout"].append(rollout_sps(rollout, args.steps, seed=r))
        samples["fused"].append(rollout_sps(fused, args.steps, seed=r))
        samples["engine"].append(rollout_sps(engine, args.steps, seed=r))
        samples["split"].append(split_us(family, tasks, policy, args.steps, seed=r))
    for envs in (sync, default, engine_envs, fused_envs):
        envs.close()
    med = {k: statistics.median(v) for k, v in samples.items() if k != "split" and v}
    bare = med.get("batched", med["sync"])
    split = {k: statistics.median(s[k] for s in samples["split"]) for k in samples["split"][0]}
    return {
        "family": spec,
        "num_envs": num_envs,
        "batched_env": batched is not None,
        "bare_sync_sps": med["sync"],
        "bare_batched_sps": med.get("batched"),
        "rollout_sps": med["rollout"],
        "rollout_fused_sps": med["fused"],
        "fused_overhead": 1 - med["fused"] / bare,
        "engine_only_sps": med["engine"],
        "overhead": 1 - med["rollout"] / bare,
        "engine_overhead": 1 - med["engine"] / bare,
        "rollout_vs_bare_sync": med["rollout"] / med["sync"],
        "us_per_vector_step": split,
        "samples": samples,
        "target_overhead": 0.25,
        "passed": 1 - max(med["rollout"], med["fused"]) / bare <= 0.25,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="nav2d,bandit,cartpole")
    ap.add_argument(
        "--slow-families",
        default="metaworld-ml1:reach-v3",
        help="families measured at the smallest env count only (skipped when not installed)",
    )
    ap.add_argument("--num-envs", default="16,64,256", help="comma-separated env counts")
    ap.add_argument("--steps", type=int, default=256, help="vector steps per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kind", default="mamba")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_rollout.json")
    args = ap.parse_args()
    env_counts = [int(n) for n in args.num_envs.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # on a shared machine, 1 avoids oversubscription

    runs = [(spec, n) for spec in args.families.split(",") if spec for n in env_counts]
    for spec in filter(None, args.slow_families.split(",")):
        try:
            make_family(spec)
        except MissingExtraError as e:
            print(f"skipping {spec}: {e}")
            continue
        runs.append((spec, min(env_counts)))

    torch.manual_seed(0)
    results = []
    for spec, n in runs:
        r = measure(spec, n, args)
        results.append(r)
        b = r["bare_batched_sps"]
        s = r["us_per_vector_step"]
        print(
            f"{spec:10s} {n:4d} envs  sync {r['bare_sync_sps']:10.0f}  batched "
            f"{'n/a' if b is None else round(b):>10}  rollout {r['rollout_sps']:8.0f}  "
            f"engine only {r['engine_only_sps']:9.0f} steps/s  overhead "
            f"{100 * r['overhead']:5.1f}%  µs/step env {s['env']:.0f} policy "
            f"{s['policy']:.0f} rest {s['bookkeeping']:.0f}",
            flush=True,
        )

    meta = {
        **run_metadata(),
        "policy": {"kind": args.kind, "d_model": 64, "n_layers": 2},
        "steps_per_measurement": args.steps,
        "repeats": args.repeats,
    }
    write_json_atomic(args.out, {**meta, "results": results})
    write_text_atomic(args.out.with_suffix(".md"), report(meta, results))
    print(f"wrote {args.out}")
    finite = [r["overhead"] for r in results] + [r["engine_overhead"] for r in results]
    return 0 if np.isfinite(finite).all() else 2


def report(meta: dict, results: list[dict]) -> str:
    def sps(x):
        return "n/a" if x is None else f"{x:.0f}"

    lines = [
        "# Rollout throughput vs bare vector envs",
        "",
        f"- command: `{meta['command']}`",
        f"- commit: `{meta['commit']}`",
        f"- machine: {meta['machine']} (shared with other jobs: expect noise)",
        f"- policy: {meta['policy']}; {meta['steps_per_measurement']} vector steps per "
        f"measurement, median of {meta['repeats']}; env steps per second (all sub-envs)",
        "- overhead = 1 - rollout / bare batched; engine only = the Rollout with a policy that "
        "costs nothing; µs per vector step from an instrumented rollout (policy: step, sample, "
        "log_prob, bootstraps; rest: the engine's bookkeeping)",
        "",
        "| family | envs | bare sync | bare batched | rollout | rollout, fused step | engine only "
        "| overhead | fused overhead | engine-only overhead | µs/step env / policy / rest | "
        "target <= 25% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        s = r["us_per_vector_step"]
        lines.append(
            f"| {r['family']} | {r['num_envs']} | {sps(r['bare_sync_sps'])} | "
            f"{sps(r['bare_batched_sps'])} | {sps(r['rollout_sps'])} | "
            f"{sps(r.get('rollout_fused_sps'))} | "
            f"{sps(r['engine_only_sps'])} | {100 * r['overhead']:.1f}% | "
            f"{100 * r.get('fused_overhead', float('nan')):.1f}% | "
            f"{100 * r['engine_overhead']:.1f}% | {s['env']:.0f} / {s['policy']:.0f} / "
            f"{s['bookkeeping']:.0f} | {'PASS' if r['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
