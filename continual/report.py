"""What a finished continual run writes: ``results.json``, ``R.json``, the metrics table
(``metrics.md``, :func:`metrics_table`) and the plots (the R heatmap, per-stage curves)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from metarl.run_dir import RunDir
from ssm.util import mean_ci, write_atomic

from . import metrics as cw

__all__ = [
    "RESULTS_FILE",
    "TABLE_FILE",
    "aggregate_seeds",
    "aggregate_table",
    "metrics_table",
    "write_outputs",
]

RESULTS_FILE = "results.json"
TABLE_FILE = "metrics.md"


def write_outputs(run: RunDir, results: dict[str, Any], name: str) -> None:
    """results.json, R.json, metrics.md and the R heatmap and per-stage curves of a finished run."""
    write_atomic(run.path / RESULTS_FILE, (json.dumps(results, indent=1) + "\n").encode())
    write_atomic(run.path / "R.json", (json.dumps(results["R"]) + "\n").encode())
    table = metrics_table(results)
    write_atomic(run.path / TABLE_FILE, table.encode())
    names = results["stages"]
    cw.plot_performance_matrix(
        results["R"], run.plot_dir / "R.png", names, title=f"{name}: R[i, j]"
    )
    for key, label in (("R_pre", "before adaptation"), ("R_adapt", "after adaptation")):
        if key in results:  # a meta-learner's
            cw.plot_performance_matrix(
                results[key], run.plot_dir / f"{key}.png", names, title=f"{name}: {key} ({label})"
            )
    cw.plot_task_curves(
        results["eval_steps"],
        results["curves"],
        run.plot_dir / "curves.png",
        boundaries=results["boundaries"],
        task_names=names,
        title=f"{name}: per-stage score",
    )
    plot_training(run, results, name)


TRAINING_KEYS = ("episodic_return", "pre_return")
"""The training return of an iteration row: PPO and RL² log ``episodic_return``, the MAML family
``pre_return`` (the return of θ on the support episodes)."""


def plot_training(run: RunDir, results: dict[str, Any], name: str) -> Path | None:
    """``plots/training.png``: the training return of every iteration along the sequence, with
    the stages shaded (None if the rows hold no training return)."""
    rows = [r for r in run.read_metrics() if r.get("kind") != "eval"]
    key = next((k for k in TRAINING_KEYS if any(k in r for r in rows)), None)
    if key is None:
        return None
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    if not points:
        return None
    steps, values = zip(*points)
    return cw.plot_training_curve(
        steps,
        values,
        run.plot_dir / "training.png",
        boundaries=results["boundaries"],
        stage_names=results["stages"],
        ylabel=key.replace("_", " "),
        title=f"{name}: training return",
    )


def plot_seed_curves(results: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """The per-stage score curves of several seeds' runs of one config: mean over seeds with a
    95% CI band (Student-t), stages shaded; None when the seeds' evaluation steps differ."""
    steps = [r["eval_steps"] for r in results]
    if any(s != steps[0] for s in steps[1:]):
        return None
    curves = np.asarray([r["curves"] for r in results], dtype=np.float64)  # (seeds, N, E)
    stats = [
        [mean_ci(curves[:, j, e]) for e in range(curves.shape[2])] for j in range(curves.shape[1])
    ]
    mean = np.array([[c["mean"] for c in row] for row in stats])
    half = np.array([[c["ci95"] for c in row] for row in stats])
    half = np.nan_to_num(half)  # one seed: no band
    return cw.plot_task_curves(
        steps[0],
        mean,
        path,
        boundaries=results[0]["boundaries"],
        task_names=results[0]["stages"],
        title=title,
        lower=mean - half,
        upper=mean + half,
    )


def metrics_table(results: dict[str, Any]) -> str:
    """The run's metrics as markdown: headline numbers, then per-stage R row and forgetting."""
    s = results["summary"]
    lines = [
        f"# {results['curriculum']}: {len(results['stages'])} stages, "
        f"{results['global_step']:,} env steps, boundaries {results['boundaries_mode']}",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines.append(f"| average performance | {fmt(s.get('average_performance'))} |")
    lines.append(f"| forgetting | {fmt(s.get('forgetting'))} |")
    lines.append(f"| forward transfer | {fmt(s.get('forward_transfer'))} |")
    if "average_adapted_performance" in s:
        lines.append(f"| average adapted performance | {fmt(s['average_adapted_performance'])} |")
        lines.append(f"| adapted forgetting | {fmt(s['adapted_forgetting'])} |")
        lines.append(f"| adaptation gain (last row) | {fmt(s['adaptation_gain'])} |")
        ft = s.get("adapted_forward_transfer")
        lines.append(f"| forward transfer of adaptation | {fmt(ft)} |")
        lines.append(f"| adaptation from scratch | {fmt(s.get('scratch_adapted_performance'))} |")
    d = s.get("detection")
    if d:
        lines.append(f"| switches detected | {d['detected']}/{d['switches']} |")
        lines.append(
            f"| mean detection delay | {fmt(d['mean_delay_steps'])} steps "
            f"({fmt(d['mean_delay_iterations'])} iterations) |"
        )
        lines.append(f"| false alarms | {d['false_alarms']} |")
    lines.append(f"| learner stages | {results['learner_stages']} |")
    lines.append(f"| wall time | {results['wall_time_s']:.0f} s |")
    if "R" in results:
        names = results["stages"]
        captions = {
            "R": "R[i, j]: score on stage j's tasks after stage i",
            "R_pre": "R_pre[i, j]: the same, sampled from θ (before adaptation)",
            "R_adapt": "R_adapt[i, j]: the same after the inner steps from θ",
        }
        for key, caption in captions.items():
            if key not in results:
                continue
            lines += ["", caption, ""]
            lines.append("| after \\ task | " + " | ".join(names) + " |")
            lines.append("| --- " * (len(names) + 1) + "|")
            for name, row in zip(names, results[key]):
                lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines += ["", "| stage | forgetting | forward transfer |", "| --- | --- | --- |"]
        ft = s.get("forward_transfer_per_stage", [None] * len(names))
        for name, f, t in zip(names, s["forgetting_per_stage"], ft):
            lines.append(f"| {name} | {fmt(f)} | {fmt(t)} |")
    return "\n".join(lines) + "\n"


AGGREGATE_KEYS = (
    "average_performance",
    "forgetting",
    "forward_transfer",
    "average_adapted_performance",
    "adapted_forgetting",
    "adaptation_gain",
    "adapted_forward_transfer",
    "post_switch_acting_return",
    "scratch_adapted_performance",
)


def aggregate_seeds(results: list[dict[str, Any]], runs: list[str]) -> dict[str, Any]:
    """The headline metrics of several seeds' runs of one config: per metric the per-seed values
    and their mean ± 95% CI over seeds (Student-t, :func:`ssm.util.mean_ci`); the detection rate
    and false alarms too where the detector ran."""
    seeds = [r["seed"] for r in results]
    metrics: dict[str, Any] = {}
    for key in AGGREGATE_KEYS:
        values = [r["summary"].get(key) for r in results]
        if all(isinstance(v, int | float) for v in values):
            metrics[key] = {"values": values, **mean_ci(values)}
    detections = [r["summary"].get("detection") for r in results]
    if all(detections):
        for key in ("detection_rate", "false_alarms", "mean_delay_iterations"):
            values = [d[key] for d in detections]
            metrics[key] = {"values": values, **mean_ci(values)}
    return {
        "curriculum": results[0]["curriculum"],
        "stages": results[0]["stages"],
        "seeds": seeds,
        "runs": runs,
        "statistic": "mean ± 95% CI over seeds, Student-t",
        "metrics": metrics,
    }


def aggregate_table(agg: dict[str, Any]) -> str:
    """:func:`aggregate_seeds` as markdown."""
    lines = [
        f"# {agg['curriculum']}: {len(agg['seeds'])} seeds ({', '.join(map(str, agg['seeds']))})",
        "",
    ]
    meta = agg.get("meta")
    if meta:
        lines += [
            f"`{meta['command']}` at {meta.get('git_commit')}"
            f"{' (dirty)' if meta.get('git_dirty') else ''}; {meta.get('cpus')} CPUs, torch "
            f"{meta.get('torch')}; {meta.get('wall_time_s', 0):.0f} s of training in all.",
            "",
        ]
    lines += [
        f"{agg['statistic']}.",
        "",
        "| metric | mean ± 95% CI | per seed |",
        "| --- | --- | --- |",
    ]
    for key, m in agg["metrics"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in m["values"])
        label = key.replace("_", " ")
        lines.append(f"| {label} | {m['mean']:.3f} ± {m['ci95']:.3f} | {per_seed} |")
    lines += ["", "runs: " + ", ".join(f"`{r}`" for r in agg["runs"])]
    return "\n".join(lines) + "\n"
