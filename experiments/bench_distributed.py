#!/usr/bin/env python
"""Rollout throughput of the Ray backend with 1, 2 and 4 workers against the local backend, in
one run (so the ratios share the machine's state).

    python experiments/bench_distributed.py
    python experiments/bench_distributed.py --families nav2d --workers 1 2 4 8 --repeats 7

For each family: a meta-batch of ``--tasks`` tasks x ``--envs-per-task`` envs, a Mamba policy
(d_model 64, 2 layers), ``--steps`` steps per collection with sampled actions. Every collector
(local, and Ray with each worker count) opens its task set once and collects once to warm up
(envs built, worker processes started); then, interleaved ``--repeats`` times, each collects
once with the policy's shared parameters and once with per-task parameters (the query
collection of a meta-learner). Reported: env steps per second of wall time, end to end (the
parameter broadcast and the trajectory transfer included), median over repeats, and the ratio
to the local backend. The local backend and every worker use one torch thread.

The Ray instance is started with ``--ray-cpus`` logical CPUs (default 8) so that all collectors'
workers can be alive at once; on a 2-core machine 4 workers therefore share 2 cores.
Writes ``experiments/results/bench_distributed.{json,md}`` (atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import ray
import torch
from results_io import run_metadata

from metarl.backends import LocalCollector, RayCollector, RayConfig
from metarl.runner import PolicyConfig
from metarl.tasks import make_family
from ssm.util import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["metaworld-ml1:reach-v3", "nav2d"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--envs-per-task", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ray-cpus", type=int, default=8)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_distributed"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for name in args.families:
            results.append(bench_family(name, args))
    finally:
        ray.shutdown()
    payload = {**run_metadata(), "settings": vars(args), "results": results}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), payload)
    write_text_atomic(out.with_suffix(".md"), markdown(payload))
    print(markdown(payload))
    return 0


def bench_family(name: str, args) -> dict:
    family = make_family(name)
    torch.manual_seed(0)
    policy = PolicyConfig(kind="mamba", d_model=64, n_layers=2).build(
        family.observation_space, family.action_space, False
    )
    tasks = family.sample(args.tasks, split="train", seed=0)
    n = len(tasks)
    stacked = {k: v.detach().expand(n, *v.shape).clone() for k, v in policy.named_parameters()}
    arms = {"local": LocalCollector(policy, family)}
    for w in args.workers:
        arms[f"ray x{w}"] = RayCollector(policy, family, RayConfig(num_workers=w))
    sets = {}
    for arm, collector in arms.items():
        start = time.perf_counter()
        sets[arm] = collector.open(tasks, args.envs_per_task)
        sets[arm].collect(args.steps, 0, generator=torch.Generator().manual_seed(0))  # warm-up
        print(f"{name} {arm}: ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    steps = args.steps * n * args.envs_per_task
    times: dict[str, dict[str, list[float]]] = {a: {"shared": [], "per_task": []} for a in arms}
    for r in range(args.repeats):
        for arm, task_set in sets.items():
            for mode, params in (("shared", None), ("per_task", stacked)):
                gen = torch.Generator().manual_seed(r)
                t = time.perf_counter()
                task_set.collect(args.steps, 1 + r, params, gen)
                times[arm][mode].append(time.perf_counter() - t)
    for arm in arms:
        sets[arm].close()
        arms[arm].close()
    rows = []
    for arm in arms:
        row = {"arm": arm, "workers": 0 if arm == "local" else int(arm.split("x")[1])}
        for mode in ("shared", "per_task"):
            med = statistics.median(times[arm][mode])
            row[f"{mode}_steps_per_s"] = steps / med
            row[f"{mode}_vs_local"] = statistics.median(times["local"][mode]) / med
            row[f"{mode}_seconds"] = times[arm][mode]
        rows.append(row)
    return {"family": name, "env_steps_per_collection": steps, "rows": rows}


def markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        "# Ray backend: rollout throughput",
        "",
        f"Command: `{payload['command']}`  ",
        f"Commit: {payload['commit']}; machine: {payload['machine']['cpus']} CPUs, "
        f"{payload['machine']['platform']}; Ray instance with {s['ray_cpus']} logical CPUs.",
        "",
        f"Meta-batch of {s['tasks']} tasks x {s['envs_per_task']} envs, {s['steps']} steps per "
        f"collection, Mamba policy (d 64, 2 layers), one torch thread per process; env steps per "
        f"second end to end, median of {s['repeats']} interleaved repeats.",
        "",
    ]
    for res in payload["results"]:
        lines += [
            f"## {res['family']}",
            "",
            "| backend | shared params steps/s | vs local | per-task params steps/s | vs local |",
            "|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['arm']} | {r['shared_steps_per_s']:.0f} | {r['shared_vs_local']:.2f}x | "
                f"{r['per_task_steps_per_s']:.0f} | {r['per_task_vs_local']:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
