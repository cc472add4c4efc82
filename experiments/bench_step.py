#!/usr/bin/env python
"""Acting-step latency: the fused CPU step (``ssm.fast_step``) against the torch step and
``nn.GRUCell``, and a policy step against the nav2d 16-env vector-env step.

What is measured (``torch.inference_mode()``, d_model=64, float32, all in one run):

1. Layer step at B in {1, 16, 64}: ``nn.GRUCell(64, 64)`` (torch's default threads, and on one
   thread), and for S4D and Mamba: ``layer.step`` (torch, with ssm's per-layer fused kernel),
   ``FusedLayerStep.step`` (new state) and ``.step_`` (state updated in place).
   ``ratio = t / t(GRUCell, default threads)``.
2. Policy step (nav2d spaces, 2 layers, d_model=64): ``policy.step`` against
   ``FusedPolicyStep.step`` / ``.step_``, for S4D, Mamba and GRU policies, at the same batches.
3. ``metarl.tasks.make_family("nav2d").make_vector_env`` of 16 tasks stepping random actions: the
   default (whatever class it returns; its name is recorded) and ``batched=False``
   (gymnasium's ``SyncVectorEnv``), against the fused policy steps at B=16.

Every candidate of a group (one batch size) is timed in blocks of ``--block`` steps, the
candidates interleaved in a new random order each round (``--rounds``), so that load from other
processes hits all alike; per-step medians over all blocks. The machine may be shared: the CPU time
other processes used during the run is recorded (``foreign_cores``); read the ratios, which are
taken within one run, rather than the absolute times.

Usage::

    python experiments/bench_step.py                       # ~2 min on 2 cores
    python experiments/bench_step.py --quick --out /tmp/s.json

Writes JSON (default ``experiments/results/bench_step.json``) and markdown next to it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_machine import ForeignLoad, git_info, log, machine_info
from torch import nn

import ssm
from ssm.fast_step import FusedLayerStep, FusedPolicyStep
from ssm.util import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_step.json"
D = 64
BATCHES = (1, 16, 64)
LAYER_KINDS = ("s4d", "mamba")
POLICY_KINDS = ("s4d", "mamba", "gru")
N_ENVS = 16
TARGETS = {
    "layer_b64_max_ratio": 1.5,
    "layer_b1_max_ratio": 1.0,
}


def _one_thread(fn):
    def run():
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fn()
        finally:
            torch.set_num_threads(prev)

    return run


def layer_candidates(B: int) -> dict[str, Any]:
    torch.manual_seed(0)
    cell = nn.GRUCell(D, D)
    xs = [torch.randn(B, D) for _ in range(16)]
    h = torch.zeros(B, D)
    it = {"i": 0}

    def x():
        it["i"] = (it["i"] + 1) & 15
        return xs[it["i"]]

    c: dict[str, Any] = {
        "grucell": lambda: cell(x(), h),
        "grucell_1thread": _one_thread(lambda: cell(x(), h)),
    }
    for kind in LAYER_KINDS:
        layer = ssm.make_layer(kind, D)
        fast = FusedLayerStep(layer)
        if not fast.fused:
            raise RuntimeError(f"{kind}: fused layer step unavailable ({fast.unsupported})")
        c.update(step_candidates(kind, layer, fast, x, B))
    return c


def step_candidates(name: str, module, fast, inputs, B: int) -> dict[str, Any]:
    """``name``_torch / _fused / _fused_inplace: one step of ``module`` and of its fused step
    ``fast`` on ``inputs()``, each carrying its own state of batch ``B``."""
    st = {k: module.initial_state(B) for k in ("torch", "fused", "inplace")}

    def torch_step():
        _, st["torch"] = module.step(inputs(), st["torch"])

    def fused_step():
        _, st["fused"] = fast.step(inputs(), st["fused"])

    def fused_step_():
        fast.step_(inputs(), st["inplace"])

    return {
        f"{name}_torch": torch_step,
        f"{name}_fused": fused_step,
        f"{name}_fused_inplace": fused_step_,
    }


def policy_candidates(B: int, family) -> dict[str, Any]:
    obs_space, act_space = family.observation_space, family.action_space
    obs = [torch.randn(B, *obs_space.shape) for _ in range(16)]
    it = {"i": 0}

    def o():
        it["i"] = (it["i"] + 1) & 15
        return obs[it["i"]]

    c: dict[str, Any] = {}
    for kind in POLICY_KINDS:
        torch.manual_seed(0)
        policy = ssm.SequencePolicy(obs_space, act_space, kind=kind, d_model=D, n_layers=2)
        fast = FusedPolicyStep(policy)
        if not fast.fused:
            raise RuntimeError(f"{kind}: fused policy step unavailable ({fast.unsupported})")
        c.update(step_candidates(f"policy_{kind}", policy, fast, o, B))
    return c


def env_candidates(family) -> tuple[dict[str, Any], dict[str, str]]:
    tasks = family.sample(N_ENVS, seed=0)
    c, classes = {}, {}
    for name, kw in (("env_default", {}), ("env_sync", {"batched": False})):
        env = family.make_vector_env(tasks, seed=0, **kw)
        env.reset(seed=0)
        classes[name] = f"{type(env).__module__}.{type(env).__qualname__}"
        env.action_space.seed(0)
        acts = [env.action_space.sample() for _ in range(16)]
        it = {"i": 0}

        def step(env=env, acts=acts, it=it):
            it["i"] = (it["i"] + 1) & 15
            env.step(acts[it["i"]])

        c[name] = step
    return c, classes


def time_group(cands: dict[str, Any], rounds: int, block: int, warmup: int, seed: int):
    """Per-step times (ns) of each candidate, in blocks interleaved in a random order per round."""
    clock = time.perf_counter_ns
    for fn in cands.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {k: [] for k in cands}
    order = list(cands)
    rng = random.Random(seed)
    foreign = []
    for _ in range(rounds):
        rng.shuffle(order)
        with ForeignLoad() as load:
            for name in order:
                fn, out = cands[name], samples[name]
                for _ in range(block):
                    t0 = clock()
                    fn()
                    out.append(clock() - t0)
        foreign.append(load.cores)
    return samples, foreign


def summarise(samples: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    out = {}
    for k, v in samples.items():
        s = sorted(v)
        out[k] = {
            "us": statistics.median(v) / 1e3,
            "us_p10": s[int(0.1 * (len(s) - 1))] / 1e3,
            "us_p90": s[int(0.9 * (len(s) - 1))] / 1e3,
            "n": len(v),
        }
    return out


def evaluate(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for B, lim in ((64, TARGETS["layer_b64_max_ratio"]), (1, TARGETS["layer_b1_max_ratio"])):
        g = res["groups"][str(B)]
        base = g["grucell"]["us"]
        for kind in LAYER_KINDS:
            for var in ("fused", "fused_inplace"):
                r = g[f"{kind}_{var}"]["us"] / base
                rows.append(
                    {
                        "target": f"{kind} layer step ({var}) / GRUCell at B={B} <= {lim}",
                        "value": r,
                        "pass": r <= lim,
                    }
                )
    g = res["groups"][str(N_ENVS)]
    for env in ("env_default", "env_sync"):
        e = g[env]["us"]
        for kind in ("s4d", "mamba"):
            for var in ("fused", "fused_inplace"):
                p = g[f"policy_{kind}_{var}"]["us"]
                rows.append(
                    {
                        "target": f"2-layer {kind} policy step ({var}) at B={N_ENVS} < nav2d "
                        f"{env.removeprefix('env_')} vector-env step ({res['env_classes'][env]})",
                        "value": p / e,
                        "pass": p < e,
                    }
                )
    return rows


def to_markdown(res: dict[str, Any]) -> str:
    m, g = res["meta"], res["groups"]
    lines = [
        "# Acting-step latency: fused CPU policy step",
        "",
        f"- command: `{m['command']}`",
        f"- when: {m['when']} ({m['wall_s']:.0f} s wall)",
        f"- commit: `{m['git']['commit']}`" + (" (dirty)" if m["git"]["dirty"] else " (clean)"),
        f"- machine: {m['machine'].get('cpu_model')}, nproc={m['machine'].get('nproc')}, "
        f"torch {m['machine'].get('torch_version')} ({m['machine'].get('torch_num_threads')} "
        "threads)",
        f"- load average at start/end: {m['load_start']} / {m['load_end']}; CPU used by other "
        f"processes during the timed blocks: median {m['foreign_cores_median']:.2f} cores "
        f"(max {m['foreign_cores_max']:.2f}). The machine is shared: absolute times are noisy, "
        "the ratios (candidates interleaved within each round) less so.",
        f"- method: {m['method']}",
        "",
        "## Layer step (D=64), µs per step (median) and ratio to nn.GRUCell (torch's threads)",
        "",
        "| step | " + " | ".join(f"B={b} µs | ratio" for b in BATCHES) + " |",
        "|---|" + "---:|---:|" * len(BATCHES),
    ]
    names = ["grucell", "grucell_1thread"] + [
        f"{k}_{v}" for k in LAYER_KINDS for v in ("torch", "fused", "fused_inplace")
    ]
    for n in names:
        cells = []
        for b in BATCHES:
            base = g[str(b)]["grucell"]["us"]
            u = g[str(b)][n]["us"]
            cells.append(f"{u:.1f} | {u / base:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Policy step (nav2d spaces, 2 layers, d_model=64), µs per step (median); "
        "speedup = t(policy.step) / t",
        "",
        "| step | " + " | ".join(f"B={b} µs | speedup" for b in BATCHES) + " |",
        "|---|" + "---:|---:|" * len(BATCHES),
    ]
    for kind in POLICY_KINDS:
        for v in ("torch", "fused", "fused_inplace"):
            n = f"policy_{kind}_{v}"
            cells = []
            for b in BATCHES:
                ref = g[str(b)][f"policy_{kind}_torch"]["us"]
                u = g[str(b)][n]["us"]
                cells.append(f"{u:.1f} | {ref / u:.2f}x")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## nav2d vector env, {N_ENVS} envs, random actions (timed in the B={N_ENVS} group)",
        "",
        "| env | class | µs per step |",
        "|---|---|---:|",
    ]
    for env in ("env_default", "env_sync"):
        lines.append(f"| {env} | `{res['env_classes'][env]}` | {g[str(N_ENVS)][env]['us']:.1f} |")
    lines += ["", "## Targets", "", "| target | value | result |", "|---|---:|:---:|"]
    for r in res["targets"]:
        verdict = "PASS" if r["pass"] else "**FAIL**"
        lines.append(f"| {r['target']} | {r['value']:.2f} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 50: a smoke test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.block, args.warmup = 3, 50, 20
    from metarl.tasks import make_family

    t_start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    family = make_family("nav2d")
    groups, foreign_all = {}, []
    env_c, env_classes = env_candidates(family)
    for B in BATCHES:
        log(f"group B={B}")
        # modules built outside inference mode, as a trainer's are (their parameters are then
        # ordinary tensors with version counters); stepped inside it
        cands = {**layer_candidates(B), **policy_candidates(B, family)}
        if B == N_ENVS:
            cands.update(env_c)
        with torch.inference_mode():
            samples, foreign = time_group(cands, args.rounds, args.block, args.warmup, args.seed)
        groups[str(B)] = summarise(samples)
        foreign_all += [f for f in foreign if f is not None]
    res: dict[str, Any] = {
        "meta": {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - t_start,
            "git": git_info(),
            "machine": machine_info(),
            "load_start": load_start,
            "load_end": [round(x, 2) for x in os.getloadavg()],
            "foreign_cores_median": statistics.median(foreign_all) if foreign_all else 0.0,
            "foreign_cores_max": max(foreign_all) if foreign_all else 0.0,
            "method": (
                f"per-step perf_counter_ns, {args.rounds} rounds x {args.block} steps per "
                f"candidate after {args.warmup} warm-up steps, candidates in a new random order "
                "each round; medians over all steps; torch.inference_mode; float32"
            ),
            "settings": vars(args) | {"out": str(args.out)},
        },
        "env_classes": env_classes,
        "groups": groups,
    }
    res["targets"] = evaluate(res)
    write_json_atomic(args.out, res)
    md = to_markdown(res)
    write_text_atomic(args.out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
