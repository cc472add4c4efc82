#!/usr/bin/env python
"""Second-order MAML meta-gradient time: the vmapped implementation vs a loop with `higher`.

    python experiments/bench_meta.py                  # 20 nav2d tasks x 10 trajectories x 100 steps
    python experiments/bench_meta.py --kind s4d --d-model 64 --episodes 20
    python experiments/bench_meta.py --quick          # tiny sizes: checks that everything runs

One meta-batch is collected once (support with θ, query with each task's adapted parameters);
then, interleaved ``--repeats`` times, the same meta-gradient (one inner SGD step on the LVC
surrogate, query VPG surrogate, exact second order) is computed by

* ``vmap``: :meth:`metarl.meta.MAML.meta_gradient`, the inner loop of all tasks in one
  ``torch.func.vmap`` inside ``torch.func.grad``;
* ``loop``: the same learner with ``vectorize=False`` (a Python loop over tasks, torch.func);
* ``higher``: the textbook baseline, a Python loop over tasks with ``higher.innerloop_ctx`` and
  ordinary autograd (:func:`metarl.meta.testing.higher_meta_gradient`).

It reports the median seconds per meta-gradient, the speed-up of vmap over higher (the issue's
target: >= 5x on CPU) and the largest difference between the two gradients. Writes
``experiments/results/bench_meta.json`` and ``.md`` (``bench_meta_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from results_io import run_metadata

import ssm
from metarl import make_family
from metarl.meta import MAML, collect_tasks
from metarl.meta.testing import higher_meta_gradient
from ssm.util import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="mamba", choices=sorted(ssm.KINDS))
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=20, help="meta-batch size")
    ap.add_argument("--episodes", type=int, default=10, help="trajectories per task")
    ap.add_argument("--steps", type=int, default=100, help="steps per trajectory")
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 with --quick)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-loop", action="store_true", help="skip the torch.func loop timing")
    ap.add_argument(
        "--vmap-chunks",
        type=int,
        nargs="*",
        default=[],
        help="also time vmap in chunks of this many tasks (MetaLearner vmap_chunk), e.g. 10 5",
    )
    ap.add_argument(
        "--torch-scan",
        action="store_true",
        help="also time vmap and higher with the layers pinned to the pure-torch reference scan "
        "(backend='torch'): what the same code costs without the fused kernels",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON path (.md beside it)")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.episodes, args.steps, args.d_model, args.repeats = 4, 3, 20, 16, 1
        args.threads = args.threads or 1  # a smoke test: steadier on a shared machine
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or HERE / "results" / (
        "bench_meta_quick.json" if args.quick else "bench_meta.json"
    )
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    family = make_family("nav2d", max_episode_steps=args.steps)
    kw = {"d_state": 16} if args.kind in ("mamba", "s4d", "s5") else None
    policy = ssm.SequencePolicy(
        family.observation_space,
        family.action_space,
        kind=args.kind,
        d_model=args.d_model,
        n_layers=args.n_layers,
        layer_kwargs=kw,
    ).to(dtype)
    n_params = sum(p.numel() for p in policy.parameters())
    learner = MAML(policy, inner_lr=0.1, inner_steps=args.inner_steps)

    tasks = family.sample(args.tasks, seed=0)
    t_collect = time.perf_counter()
    pre = collect_tasks(policy, family, tasks, args.episodes, args.steps, seed=0)
    supports = learner.prepare(pre, args.tasks)
    adapted = learner.adapt_tasks(None, supports)
    post = collect_tasks(policy, family, tasks, args.episodes, args.steps, seed=1, params=adapted)
    query = learner.prepare(post, args.tasks)
    t_collect = time.perf_counter() - t_collect
    print(
        f"{args.kind} d_model={args.d_model} x{args.n_layers} ({n_params} params, {args.dtype}); "
        f"{args.tasks} tasks x {args.episodes} trajectories x {args.steps} steps; "
        f"collected in {t_collect:.1f}s; threads={torch.get_num_threads()}",
        flush=True,
    )

    def ours(chunk: int | None = None):
        def run():
            learner.vectorize, learner.vmap_chunk = True, chunk
            return learner.meta_gradient(supports, query).grads

        return run

    def ours_loop():
        learner.vectorize = False
        return learner.meta_gradient(supports, query).grads

    def baseline():
        return higher_meta_gradient(policy, supports, query, 0.1, args.inner_steps)

    layers = [m for m in policy.modules() if isinstance(getattr(m, "backend", None), str)]

    def pinned(fn, backend: str):
        def run():
            saved = [m.backend for m in layers]
            for m in layers:
                m.backend = backend
            try:
                return fn()
            finally:
                for m, b in zip(layers, saved):
                    m.backend = b

        return run

    impls = {"vmap": ours()}
    impls.update({f"vmap/chunk{k}": ours(k) for k in args.vmap_chunks})
    if not args.no_loop:
        impls["loop"] = ours_loop
    impls["higher"] = baseline
    if args.torch_scan:
        impls["vmap/torch-scan"] = pinned(ours(), "torch")
        impls["higher/torch-scan"] = pinned(baseline, "torch")
    for fn in impls.values():  # warm-up: the one-off second-order probe, kernel builds, allocator
        fn()
    samples: dict[str, list[float]] = {name: [] for name in impls}
    grads: dict[str, dict] = {}
    for r in range(args.repeats):  # interleaved, so every implementation sees the same machine
        for name, fn in impls.items():
            dt, g = timed(fn)
            samples[name].append(dt)
            grads[name] = g
            print(f"  repeat {r}: {name:12s} {dt:8.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    scale = max(float(g.abs().max()) for g in grads["higher"].values())
    vmaps = [k for k in impls if k.startswith("vmap") and "torch-scan" not in k]
    diff = max(
        float((grads[v][k] - g).abs().max())
        for v in impls
        if v != "higher"
        for k, g in grads["higher"].items()
    )
    # the target's ratio: vmap against the higher loop over the same layers (same kernels)
    speedups = {v: med["higher"] / med[v] for v in vmaps}
    per_repeat = {v: [h / t for h, t in zip(samples["higher"], samples[v])] for v in vmaps}
    speedup = speedups["vmap"]
    best = max(speedups, key=speedups.get)
    # beside it: against the higher loop over the pure-torch reference scan
    vs_torch_scan = (
        {v: med["higher/torch-scan"] / med[v] for v in impls if v.startswith("vmap")}
        if "higher/torch-scan" in med
        else {}
    )
    print(
        "median s/meta-gradient: "
        + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
        + ";  speed-up vs higher: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
        + f" (target >= 5x);  max |Δgrad| {diff:.2e} (grad scale {scale:.2e})",
        flush=True,
    )
    if vs_torch_scan:
        print(
            "speed-up vs higher over the torch reference scan: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in vs_torch_scan.items()),
            flush=True,
        )

    meta = {
        **run_metadata(),
        "quick": args.quick,
        "policy": {
            "kind": args.kind,
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "params": n_params,
            "dtype": args.dtype,
        },
        "meta_batch": {
            "tasks": args.tasks,
            "trajectories_per_task": args.episodes,
            "steps": args.steps,
        },
        "inner_steps": args.inner_steps,
        "repeats": args.repeats,
        # glibc malloc tunables change timings (not results): recorded with them
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }
    result = {
        "seconds_per_meta_gradient": med,
        "samples": samples,
        "speedup_vmap_vs_higher": speedup,
        "speedup_per_repeat": per_repeat["vmap"],
        "speedups_vs_higher": speedups,
        "speedups_per_repeat": per_repeat,
        "speedups_vs_higher_torch_scan": vs_torch_scan,
        "best_vmap": best,
        "target_speedup": 5.0,
        "passed": speedups[best] >= 5.0,
        "max_abs_grad_difference": diff,
        "grad_scale": scale,
    }
    write_json_atomic(out, {**meta, "result": result})
    lines = [
        "# Second-order MAML meta-gradient: vmap vs a Python loop with higher",
        "",
        f"- command: `{meta['command']}`",
        f"- commit: `{meta['commit']}`",
        f"- machine: {meta['machine']}",
        f"- policy: {args.kind}, d_model {args.d_model} x {args.n_layers} layers, {n_params} "
        f"parameters, {args.dtype}",
        f"- meta-batch: {args.tasks} nav2d tasks x {args.episodes} trajectories x {args.steps} "
        f"steps, {args.inner_steps} inner step(s)",
        f"- glibc malloc environment: {meta['malloc_env'] or 'defaults'}",
        "- per-repeat samples (s): "
        + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in samples.items() if v),
        "",
        "| implementation | median s / meta-gradient |",
        "|---|---:|",
        *[f"| {k} | {v:.3f} |" for k, v in med.items()],
        "",
        "speed-up vs higher: "
        + ", ".join(f"{k} **{v:.2f}x**" for k, v in speedups.items())
        + f" (target >= 5x: {'PASS' if speedups[best] >= 5 else 'FAIL'}); max |Δgrad| "
        f"{diff:.2e} at grad scale {scale:.2e}",
    ]
    if vs_torch_scan:
        lines += [
            "",
            "speed-up vs higher over the pure-torch reference scan (`higher/torch-scan`, the "
            "layers pinned to `backend='torch'`): "
            + ", ".join(f"{k} **{v:.2f}x**" for k, v in vs_torch_scan.items()),
        ]
    if args.quick:
        lines.insert(2, "_--quick: tiny sizes, a smoke test; not the benchmark's numbers._\n")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
