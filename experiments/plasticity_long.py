"""Loss of plasticity over a long sequence, and what each plasticity remedy does to it: the
analysis of the runs of ``experiments/configs/plasticity_long.yaml`` (one ``metarl sequence
--seeds`` call per remedy, listed in each aggregate.json).

For every method and seed: the learning speed of every stage (:mod:`continual.learning_speed`,
the mean training score, the return mapped to [0, 1], over the stage's first N env steps,
clipped, and unclipped), its mean over the first
and the last ``--edge`` stages and its least-squares slope over the stage index; the greedy
end-of-stage score on the stage just trained (``R[k, k]``) the same way; and the plasticity
metrics of results.json (each stage's mean over its measurements) and the policy's entropy the
same way. Then mean ± 95% CI over seeds (Student-t, :func:`ssm.util.mean_ci`). Writes
``summary.json``, ``tables.md`` and ``learning_speed.png`` into ``--out``, and copies each method's
aggregate.json.

    python experiments/plasticity_long.py \
        --method none=runs/plasticity_long-none-seeds-1-2-3 \
        --method cbp=runs/plasticity_long-cbp-seeds-1-2-3 ... \
        --out experiments/results/plasticity_long
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from results_io import run_metadata

from continual.learning_speed import run_learning_speed
from metarl.run_dir import RunDir
from ssm.util import mean_ci, write_json_atomic, write_text_atomic

PLASTICITY_KEYS = (
    "dormant_ratio",
    "effective_rank",
    "srank",
    "active_fraction",
    "weight_magnitude",
)


def trend(values: list[float], edge: int) -> dict[str, float]:
    """First-``edge`` mean, last-``edge`` mean, their difference and the slope per stage."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    slope = float(np.polyfit(np.arange(len(v))[ok], v[ok], 1)[0]) if ok.sum() > 1 else np.nan
    first, last = float(np.nanmean(v[:edge])), float(np.nanmean(v[-edge:]))
    return {"first": first, "last": last, "last_minus_first": last - first, "slope": slope}


def analyse_run(run: Path, window: int | None, edge: int) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    out: dict[str, Any] = {"run": str(run)}
    for clip in (True, False):
        ls = run_learning_speed(run, window, clip)
        name = f"learning_speed@{ls['window_steps']}" + ("" if clip else "_unclipped")
        out[name] = {"per_stage": ls["per_stage"], **trend(ls["per_stage"], edge)}
    # the action distribution's entropy per stage (mean over its iterations): exploration
    # shrinking is a loss of plasticity that no unit-level remedy touches
    rows = [r for r in RunDir.open(run).read_metrics() if "entropy" in r and "stage" in r]
    entropy = [
        float(np.mean([r["entropy"] for r in rows if r["stage"] == k]))
        for k in range(len(results["stages"]))
    ]
    out["policy_entropy"] = {"per_stage": entropy, **trend(entropy, edge)}
    diag = [results["R"][k][k] for k in range(len(results["stages"]))]
    out["end_of_stage_score"] = {"per_stage": diag, **trend(diag, edge)}
    per_stage = {e["stage"]: e["mean"] for e in results.get("plasticity", [])}
    for key in PLASTICITY_KEYS:
        values = [per_stage.get(k, {}).get(key, np.nan) for k in range(len(results["stages"]))]
        out[f"plasticity/{key}"] = {"per_stage": values, **trend(values, edge)}
    return out


def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure and statistic (first, last, ...), mean ± CI over seeds; per stage too."""
    agg: dict[str, Any] = {}
    for measure in [k for k in runs[0] if isinstance(runs[0][k], dict)]:
        entry: dict[str, Any] = {}
        for stat in ("first", "last", "last_minus_first", "slope"):
            values = [r[measure][stat] for r in runs]
            entry[stat] = {"values": values, **mean_ci(values)}
        stages = np.array([r[measure]["per_stage"] for r in runs], dtype=np.float64)
        cis = [mean_ci(stages[:, k]) for k in range(stages.shape[1])]
        entry["per_stage"] = {
            "mean": [c["mean"] for c in cis],
            "ci95": [c["ci95"] for c in cis],
        }
        agg[measure] = entry
    return agg


def fmt(m: dict[str, Any], digits: int = 3) -> str:
    return f"{m['mean']:.{digits}f} ± {m['ci95']:.{digits}f}"


def plot(summary: dict[str, Any], measures: list[str], path: Path, block: int) -> None:
    """One panel per measure: per method, the mean over seeds of each block of ``block``
    consecutive stages (each seed's block mean first), with its 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4.2))
    for ax, measure in zip(np.atleast_1d(axes), measures):
        for method, entry in summary["methods"].items():
            per_seed = np.array([r[measure]["per_stage"] for r in entry["runs"]], dtype=float)
            n = per_seed.shape[1] // block
            blocks = np.nanmean(per_seed[:, : n * block].reshape(len(per_seed), n, block), 2)
            cis = [mean_ci(blocks[:, b]) for b in range(n)]
            mean = np.array([c["mean"] for c in cis])
            half = np.nan_to_num(np.array([c["ci95"] for c in cis]))
            x = np.arange(n) * block + (block - 1) / 2
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=method, lw=1.4)
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.12)
        ax.set_xlabel(f"stage index (mean of blocks of {block} stages)")
        ax.set_title(measure, fontsize=10)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("nav2d_goal_rotation, PPO + Mamba: mean ± 95% CI over 3 seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", action="append", required=True, metavar="NAME=SEEDS_DIR")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/plasticity_long"))
    parser.add_argument("--edge", type=int, default=5, help="stages in the first/last means")
    parser.add_argument("--window", type=int, help="env steps of learning speed (default: stage)")
    args = parser.parse_args()
    summary: dict[str, Any] = {"meta": run_metadata(), "edge": args.edge, "methods": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.method:
        name, _, directory = spec.partition("=")
        seeds_dir = Path(directory)
        agg = json.loads((seeds_dir / "aggregate.json").read_text())
        runs = [analyse_run(Path(r), args.window, args.edge) for r in agg["runs"]]
        for run, seed in zip(runs, agg["seeds"]):  # results.json does not name its seed
            run["seed"] = seed
        summary["methods"][name] = {
            "aggregate": str(seeds_dir),
            "seeds": agg["seeds"],
            "run_meta": agg.get("meta"),
            "runs": runs,
            "over_seeds": over_seeds(runs),
        }
        (args.out / name).mkdir(exist_ok=True)
        shutil.copyfile(seeds_dir / "aggregate.json", args.out / name / "aggregate.json")
    write_json_atomic(args.out / "summary.json", summary, indent=None)
    first = next(iter(summary["methods"].values()))["over_seeds"]
    speed = next(k for k in first if k.startswith("learning_speed@"))
    measures = [speed, "end_of_stage_score", "policy_entropy"]
    plot(summary, measures, args.out / "learning_speed.png", args.edge)
    write_text_atomic(args.out / "tables.md", tables(summary))
    print(f"wrote {args.out}/summary.json, tables.md, learning_speed.png")


def tables(summary: dict[str, Any]) -> str:
    """Markdown tables of the measures: first / last ``edge`` stages, difference, slope, and the
    slope's difference from the first method's, seed by seed (the runs share seeds)."""
    edge = summary["edge"]
    methods = summary["methods"]
    baseline = next(iter(methods))
    measures = list(next(iter(methods.values()))["over_seeds"])
    lines = []
    for measure in measures:
        lines += [
            f"**{measure}** (mean ± 95% CI over seeds, Student-t)",
            "",
            f"| method | first {edge} stages | last {edge} stages | last − first | "
            f"slope per 10 stages | slope − {baseline}'s, paired by seed |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        base = methods[baseline]["runs"]
        for name, entry in methods.items():
            m = entry["over_seeds"][measure]
            slope10 = {k: v * 10 for k, v in m["slope"].items() if k in ("mean", "ci95")}
            diffs = [
                10 * (r[measure]["slope"] - b[measure]["slope"])
                for r, b in zip(entry["runs"], base)
            ]
            paired = "" if name == baseline else fmt(mean_ci(diffs))
            lines.append(
                f"| {name} | {fmt(m['first'])} | {fmt(m['last'])} | "
                f"{fmt(m['last_minus_first'])} | {fmt(slope10)} | {paired} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
