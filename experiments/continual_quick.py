#!/usr/bin/env python
"""Continual learning on a quick sequence: fine-tuning vs EWC vs stage replay vs hidden boundaries.

    python experiments/continual_quick.py            # 3 seeds x 4 methods (~10-15 min, 2 cores)
    python experiments/continual_quick.py --quick    # 1 seed, 2 iterations per stage: a smoke test
    python experiments/continual_quick.py --methods finetune,ewc,l2,packnet,ewc_replay --seeds 1 2

Every run is ``metarl sequence experiments/configs/sequence_quick.yaml`` (nav2d_quadrants: four
goals, one per quadrant, 16k env steps each, a tiny S4D policy) plus the method's overrides, into
its own run directory under ``runs/continual_quick``. Forward transfer uses single-task reference
runs (``reference.mode=run``), computed once per seed and shared through a cache file. Writes
``experiments/results/continual_quick.json`` (``_smoke`` with ``--quick``): the command, commit,
machine, config, every run's R, curves and metrics, and per method mean ± 95% CI (Student t over
seeds) of average performance, forgetting, forward transfer and, where the drift detector runs,
detection rate, delay and false alarms; the same as a markdown table beside it, with the issue's
targets checked.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

from results_io import run_metadata

from continual.config import SequenceConfig
from continual.sequence import run_sequence
from metarl.config import config_to_dict, load_config
from ssm.util import mean_ci, write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "sequence_quick.yaml"

METHODS: dict[str, list[str]] = {
    "finetune": [],
    "ewc": ["regularizer.kind=ewc"],
    "replay": ["replay.enabled=true"],
    "ewc_hidden": ["regularizer.kind=ewc", "boundaries=hidden", "drift.enabled=true"],
    # (the base config enables the drift detector: with known boundaries it only watches, so
    # every method also scores the detector against the known switches)
    # extras (not in the default comparison)
    "l2": ["regularizer.kind=l2", "regularizer.strength=1.0"],
    "packnet": ["regularizer.kind=packnet"],
    "ewc_replay": ["regularizer.kind=ewc", "replay.enabled=true"],
    "replay_hidden": ["replay.enabled=true", "boundaries=hidden", "drift.enabled=true"],
}
DEFAULT_METHODS = ["finetune", "ewc", "replay", "ewc_hidden"]
LABELS = {
    "finetune": "fine-tuning",
    "ewc": "EWC (known boundaries)",
    "replay": "stage replay (known boundaries)",
    "ewc_hidden": "EWC, hidden boundaries (drift detection)",
    "l2": "L2 anchor",
    "packnet": "PackNet",
    "ewc_replay": "EWC + replay",
    "replay_hidden": "replay, hidden boundaries (drift detection)",
}
QUICK = ["stage_steps=1280", "eval.every_iterations=1"]


def fmt(d: dict[str, float]) -> str:
    if d["n"] == 0:
        return "n/a"
    half = "" if math.isnan(d["ci95"]) else f" ± {d['ci95']:.3f}"
    return f"{d['mean']:.3f}{half}"


def aggregate(runs: list[dict]) -> dict[str, dict]:
    s = [r["summary"] for r in runs]
    out = {
        "average_performance": mean_ci([x["average_performance"] for x in s]),
        "forgetting": mean_ci([x["forgetting"] for x in s]),
        "forward_transfer": mean_ci([x.get("forward_transfer", math.nan) for x in s]),
        "wall_time_s": mean_ci([r["wall_time_s"] for r in runs]),
    }
    det = [x["detection"] for x in s if "detection" in x]
    if det:
        out["detection_rate"] = mean_ci([d["detection_rate"] for d in det])
        out["mean_delay_iterations"] = mean_ci([d["mean_delay_iterations"] for d in det])
        out["false_alarms"] = mean_ci([float(d["false_alarms"]) for d in det])
        out["switches_detected"] = f"{sum(d['detected'] for d in det)}/" + str(
            sum(d["switches"] for d in det)
        )
    return out


def targets(agg: dict[str, dict]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, on the seed means: (target, met?, numbers)."""
    rows: list[tuple[str, bool | None, str]] = []
    ft = agg.get("finetune")
    if ft and "ewc" in agg:
        e = agg["ewc"]
        f_ok = e["forgetting"]["mean"] <= 0.5 * ft["forgetting"]["mean"]
        p_ok = e["average_performance"]["mean"] >= ft["average_performance"]["mean"]
        rows.append(
            (
                "EWC forgetting <= 1/2 fine-tuning's, average performance >= fine-tuning's",
                bool(f_ok and p_ok),
                f"F {e['forgetting']['mean']:.3f} vs {ft['forgetting']['mean']:.3f}; "
                f"P {e['average_performance']['mean']:.3f} vs "
                f"{ft['average_performance']['mean']:.3f}",
            )
        )
    if ft and "replay" in agg:
        r = agg["replay"]
        rows.append(
            (
                "stage replay reduces forgetting vs no replay (fine-tuning)",
                bool(r["forgetting"]["mean"] < ft["forgetting"]["mean"]),
                f"F {r['forgetting']['mean']:.3f} vs {ft['forgetting']['mean']:.3f}",
            )
        )
    for name in ("ewc_hidden", "replay_hidden"):
        if name in agg and "detection_rate" in agg[name]:
            d = agg[name]
            rows.append(
                (
                    f"hidden boundaries ({name}): >= 90% of switches detected",
                    bool(d["detection_rate"]["mean"] >= 0.9),
                    f"{d['switches_detected']} switches, "
                    f"{d['false_alarms']['mean']:.2f} false alarms per run",
                )
            )
    return rows


def markdown(payload: dict) -> str:
    agg = payload["aggregate"]
    lines = [
        f"# Continual learning on {payload['curriculum']} ({payload['mode']})",
        "",
        f"`{payload['meta']['command']}` at {payload['meta']['commit']}, "
        f"{payload['wall_time_s']:.0f} s in all. Seeds {payload['seeds']}; "
        "mean ± 95% CI (Student t over seeds).",
        "",
    ]
    if payload["mode"].startswith("smoke"):
        lines += [
            "**Smoke test**: 2 iterations per stage, so nothing is learned and the drift "
            "detector (min_instances=5) cannot fire; it checks that the pipeline runs, not the "
            "targets.",
            "",
        ]
    lines += [
        "| method | average performance ↑ | forgetting ↓ | forward transfer ↑ | "
        "switches detected | delay (iterations) | false alarms / run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in agg.items():
        det = a.get("switches_detected", "–")
        delay = fmt(a["mean_delay_iterations"]) if "mean_delay_iterations" in a else "–"
        fa = fmt(a["false_alarms"]) if "false_alarms" in a else "–"
        lines.append(
            f"| {LABELS.get(name, name)} | {fmt(a['average_performance'])} | "
            f"{fmt(a['forgetting'])} | {fmt(a['forward_transfer'])} | {det} | {delay} | {fa} |"
        )
    lines += ["", "## Targets (issue 5)", "", "| target | met | numbers |", "| --- | --- | --- |"]
    for text, ok, numbers in payload["targets"]:
        lines.append(f"| {text} | {'yes' if ok else 'no'} | {numbers} |")
    lines += ["", "## R matrices (first seed)", ""]
    for name, runs in payload["runs"].items():
        r = runs[0]
        lines.append(f"{LABELS.get(name, name)}, seed {r['seed']}:")
        lines.append("")
        lines.append("| after \\ task | " + " | ".join(payload["stages"]) + " |")
        lines.append("| --- " * (len(payload["stages"]) + 1) + "|")
        for stage, row in zip(payload["stages"], r["R"]):
            lines.append(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 iterations per stage")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--root", default="runs/continual_quick", help="folder for run directories")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (markdown beside it)")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    root = Path(args.root) / ("smoke" if args.quick else "full")
    base = [*(QUICK if args.quick else []), f"run.root={root}", *args.overrides]
    base.append(f"reference.path={root / 'reference_cache.json'}")
    out = args.out or HERE / "results" / (
        "continual_quick_smoke.json" if args.quick else "continual_quick.json"
    )

    start = time.perf_counter()
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    configs = {}
    for seed in seeds:
        for method in methods:
            overrides = [*base, f"seed={seed}", "reference.mode=run", *METHODS[method]]
            overrides.append(f"run.name={method}-seed{seed}")
            cfg = load_config(SequenceConfig, CONFIG, overrides)
            configs[method] = config_to_dict(cfg)
            t0 = time.perf_counter()
            result = run_sequence(cfg)
            r = result.results
            runs[method].append(
                {
                    "seed": seed,
                    "run_dir": str(result.run.path),
                    "R": r["R"],
                    "eval_steps": r["eval_steps"],
                    "curves": r["curves"],
                    "detections": r["detections"],
                    "summary": r["summary"],
                    "wall_time_s": time.perf_counter() - t0,
                }
            )
            s = r["summary"]
            det = s.get("detection")
            extra = f"  detected {det['detected']}/{det['switches']}" if det else ""
            print(
                f"{method:12s} seed {seed}: P {s['average_performance']:.3f}  "
                f"F {s['forgetting']:.3f}  FT {s.get('forward_transfer', math.nan):.3f}"
                f"{extra}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    agg = {m: aggregate(runs[m]) for m in methods}
    first = runs[methods[0]][0]
    payload = {
        "meta": run_metadata(),
        "mode": "smoke test (--quick)" if args.quick else "full comparison",
        "curriculum": configs[methods[0]]["curriculum"],
        "stages": None,
        "seeds": seeds,
        "methods": {m: METHODS[m] for m in methods},
        "base_config": str(CONFIG.relative_to(HERE.parent)),
        "configs": configs,
        "aggregate": agg,
        "runs": runs,
        "wall_time_s": time.perf_counter() - start,
    }
    from continual.sequence import prepare_curriculum

    payload["stages"] = prepare_curriculum(load_config(SequenceConfig, CONFIG, base)).stage_names
    payload["targets"] = targets(agg)
    write_json_atomic(out, payload)
    write_text_atomic(out.with_suffix(".md"), markdown(payload) + "\n")
    print(markdown(payload))
    print(f"\nwrote {out} and {out.with_suffix('.md')}; first run: {first['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
