"""Learning speed per stage: how fast a continual learner picks up each new stage, read from its
training curve (the per-iteration rows of ``metrics.jsonl``). A learner that loses plasticity
learns later stages more slowly (Dohare et al. 2024, "Loss of plasticity in deep continual
learning", measure it the same way: the mean performance over each task's training).

The learning speed of stage ``k`` over its first ``N`` env steps is the mean training score of
the iterations that end within them::

    LS_k(N) = mean { score(G_i) : iteration i of stage k, 0 < s_i − S_k <= N }

``S_k`` the stage's first env step, ``s_i`` the env step at the end of iteration ``i``, ``G_i``
the mean return of the episodes that ended in it (a row's ``episodic_return``; iterations with
none are skipped) and ``score`` the linear map of the stage's ``return_range`` to ``[0, 1]``
(standing still 0, the best path 1 on nav2d), clipped like the curriculum's scores
(:meth:`curricula.TaskEntry.score`); ``clip=False`` keeps the part below 0 (a policy still heading
for the previous stage's goal), which mixes in how well the previous stage was learned. With
equally spaced iterations, ``LS_k(N)`` is the area under the stage's training curve over its
first ``N`` steps divided by ``N``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RETURN_KEY",
    "learning_speed",
    "run_learning_speed",
    "stage_learning_speeds",
    "stage_return_ranges",
]

RETURN_KEY = "episodic_return"


def learning_speed(steps: Sequence[float], values: Sequence[float], window: float) -> float:
    """The mean of ``values`` whose ``steps`` (env steps since the stage began, at the end of each
    iteration) lie in ``(0, window]``; NaN values are skipped; NaN if none is left."""
    if len(steps) != len(values):
        raise ValueError(
            f"steps and values must have one length, got {len(steps)} and {len(values)}"
        )
    if not window > 0:
        raise ValueError(f"window must be a positive number of env steps, got {window!r}")
    chosen = [
        float(v) for s, v in zip(steps, values) if 0 < s <= window and not math.isnan(float(v))
    ]
    return float(np.mean(chosen)) if chosen else math.nan


def stage_learning_speeds(
    rows: Iterable[Mapping[str, Any]],
    stage_starts: Sequence[int],
    window: float,
    return_ranges: Sequence[tuple[float, float] | None] | None = None,
    clip: bool = True,
    key: str = RETURN_KEY,
) -> list[float]:
    """:func:`learning_speed` of every stage from a run's rows (those with ``stage``, ``step`` and
    ``key``; evaluation rows have no ``key``). ``stage_starts[k]``: stage k's first env step;
    ``return_ranges[k]``: ``(low, high)`` mapping stage k's returns to scores (clipped to
    ``[0, 1]`` with ``clip``), or None (raw returns)."""
    if return_ranges is not None and len(return_ranges) != len(stage_starts):
        raise ValueError(
            f"return_ranges needs one entry per stage ({len(stage_starts)}), got "
            f"{len(return_ranges)}"
        )
    curves: list[tuple[list[float], list[float]]] = [([], []) for _ in stage_starts]
    for row in rows:
        if key not in row or row.get("kind") == "eval":
            continue
        k = int(row["stage"])
        if not 0 <= k < len(stage_starts):
            raise ValueError(f"a row of stage {k} but only {len(stage_starts)} stages are given")
        value = row[key]
        value = math.nan if value is None else float(value)
        span = None if return_ranges is None else return_ranges[k]
        if span is not None:
            low, high = span
            value = (value - low) / (high - low)
            if clip and not math.isnan(value):
                value = min(1.0, max(0.0, value))
        curves[k][0].append(float(row["step"]) - stage_starts[k])
        curves[k][1].append(value)
    return [learning_speed(steps, values, window) for steps, values in curves]


def stage_return_ranges(curriculum, stage_tasks: Sequence[Sequence[str]]):
    """Per stage, the ``(low, high)`` return range that scores its training return: the mean of
    its training entries' ranges (exact with one entry or equal ranges); None where an entry is
    not scored by return (``metric: success``)."""
    out: list[tuple[float, float] | None] = []
    for names in stage_tasks:
        entries = [curriculum.task(n) for n in names]
        if any(e.metric != "return" for e in entries):
            out.append(None)
            continue
        out.append(
            (
                float(np.mean([e.return_range[0] for e in entries])),
                float(np.mean([e.return_range[1] for e in entries])),
            )
        )
    return out


def run_learning_speed(
    run_dir: str | Path, window: int | None = None, clip: bool = True
) -> dict[str, Any]:
    """The learning speed of every stage of a finished ``metarl sequence`` run directory, from its
    ``metrics.jsonl``, ``results.json`` and curriculum: ``{"window_steps", "clipped",
    "normalised", "per_stage"}`` (``window`` None: each stage's whole length, the stage's mean
    training score; ``normalised``: per stage, whether the values are scores or raw returns)."""
    from curricula import load_curriculum
    from metarl.run_dir import RunDir

    from .config import SequenceConfig

    run = RunDir.open(run_dir, expect="sequence")
    results = json.loads((run.path / "results.json").read_text())
    cfg = run.load_config(SequenceConfig)
    copy = run.path / "curriculum.yaml"
    curriculum = load_curriculum(copy if copy.is_file() else cfg.curriculum)
    spi = int(results["steps_per_iteration"])
    lengths = [n * spi for n in results["stage_iterations"]]
    starts = [int(s) for s in np.concatenate([[0], np.cumsum(lengths)[:-1]])]
    ranges = stage_return_ranges(curriculum, results["stage_tasks"])
    if window is None:
        if len(set(lengths)) != 1:
            raise ValueError(f"stages differ in length ({sorted(set(lengths))}): give a window")
        window = lengths[0]
    speeds = stage_learning_speeds(run.read_metrics(), starts, window, ranges, clip)
    return {
        "window_steps": window,
        "clipped": clip,
        "normalised": [r is not None for r in ranges],
        "per_stage": speeds,
    }
