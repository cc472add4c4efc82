"""Continual-learning metrics as defined by Continual World (Wołczyk et al., 2021), plus drift
detection scores and plots.

A sequence of ``N`` tasks is learned in ``N`` stages, stage ``i`` training task ``i``.

- **Performance matrix** ``R[i, j]``: performance (success rate, or a normalised return) on task
  ``j`` at the end of stage ``i``, shape ``(N, N)``.
- **Average performance** ``P = 1/N Σ_j R[N−1, j]`` (CW's ``P(T)`` at the end of training);
  :func:`average_performance_curve` gives ``P(t) = 1/N Σ_j p_j(t)`` along the whole run.
- **Forgetting** ``F_i = R[i, i] − R[N−1, i]`` (performance right after learning task ``i``
  minus at the end) and ``F = 1/N Σ_i F_i``, averaged over all ``N`` tasks as CW does (the last
  task's ``F`` is 0 by definition; :func:`forgetting` returns the per-task values too).
- **Forward transfer** against a reference run that learns each task alone from scratch, with
  ``AUC`` the normalised area under a task's training curve during its own stage::

      AUC_i = 1/Δ ∫_{stage i} p_i(t) dt,   AUC_i^b = 1/Δ ∫_0^Δ p_i^b(t) dt
      FT_i = (AUC_i − AUC_i^b) / (1 − AUC_i^b),        FT = mean_i FT_i

  The integral is the trapezoid rule over the evaluation points, divided by the span they cover
  (:func:`curve_auc`). ``FT_i`` is undefined where the reference is perfect (``AUC_i^b = 1``):
  it is NaN there, and ``FT`` averages the defined values.
- **Drift detection** (:func:`detection_scores`): each true boundary is matched to the first
  detection at or after it and before the next boundary (and within ``max_delay``); its delay
  is ``detection − boundary``; every other detection is a false alarm.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm.util import write_atomic

__all__ = [
    "DetectionScores",
    "average_performance",
    "average_performance_curve",
    "check_performance_matrix",
    "curve_auc",
    "detection_scores",
    "forgetting",
    "forward_transfer",
    "performance_matrix_from_curves",
    "plot_performance_matrix",
    "plot_task_curves",
    "summarize",
]


def check_performance_matrix(R) -> np.ndarray:
    """``R`` as a float ``(N, N)`` array, or a ValueError saying what is wrong."""
    arr = np.asarray(R, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(
            f"R must be a square (N stages, N tasks) matrix with N >= 1, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("R must be finite everywhere (evaluate every task after every stage)")
    return arr


def average_performance(R) -> float:
    """``1/N Σ_j R[N−1, j]``: mean performance over all tasks at the end of training."""
    return float(check_performance_matrix(R)[-1].mean())


def average_performance_curve(curves) -> np.ndarray:
    """``P(t) = 1/N Σ_j p_j(t)`` from ``curves (N tasks, E evaluation points)``."""
    arr = np.asarray(curves, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"curves must be a finite (N tasks, E points) array, got {arr.shape}")
    return arr.mean(axis=0)


def forgetting(R) -> tuple[float, np.ndarray]:
    """``(F, F_i)`` with ``F_i = R[i, i] − R[N−1, i]`` and ``F = mean_i F_i`` over all N tasks."""
    arr = check_performance_matrix(R)
    per_task = np.diag(arr) - arr[-1]
    return float(per_task.mean()), per_task


def curve_auc(values, steps=None) -> float:
    """Normalised area under a curve: ``trapezoid(values, steps) / (steps[-1] − steps[0])``
    (the mean for one point). ``steps`` default to evenly spaced points."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("values must be a non-empty finite sequence")
    if v.size == 1:
        return float(v[0])
    x = np.arange(v.size, dtype=np.float64) if steps is None else np.asarray(steps, np.float64)
    if x.shape != v.shape:
        raise ValueError(f"steps must match values, got {x.shape} and {v.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("steps must be strictly increasing")
    area = float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(x)))  # trapezoid rule
    return area / float(x[-1] - x[0])


def forward_transfer(
    curves: Sequence, reference_curves: Sequence, steps: Sequence | None = None
) -> tuple[float, np.ndarray]:
    """``(FT, FT_i)``: CW forward transfer of each task's training curve in the sequence
    (``curves[i]``: p_i during stage i) against the single-task reference run
    (``reference_curves[i]``: p_i^b over an equally long run). ``steps[i]``, if given, are the
    evaluation points of both curves of task ``i``. NaN where ``AUC_i^b = 1``."""
    if len(curves) != len(reference_curves) or len(curves) == 0:
        raise ValueError(
            f"need one reference curve per task curve, got {len(curves)} and "
            f"{len(reference_curves)}"
        )
    if steps is not None and len(steps) != len(curves):
        raise ValueError(f"steps must give one array per task, got {len(steps)}")
    ft = np.empty(len(curves))
    for i, (c, ref) in enumerate(zip(curves, reference_curves)):
        s = None if steps is None else steps[i]
        a, b = curve_auc(c, s), curve_auc(ref, s)
        ft[i] = np.nan if np.isclose(b, 1.0) else (a - b) / (1.0 - b)
    defined = ft[np.isfinite(ft)]
    return (float(defined.mean()) if defined.size else float("nan")), ft


@dataclass
class DetectionScores:
    """How well detections found the true task boundaries."""

    delays: list[int | None]
    """per boundary: steps from the boundary to its detection (None: missed)"""
    mean_delay: float
    """mean over the detected boundaries (NaN if none)"""
    missed: int
    """boundaries without a detection"""
    false_alarms: int
    """detections not matched to a boundary"""
    false_alarm_rate: float | None
    """false alarms per step (given the stream's length), else None"""


def detection_scores(
    boundaries: Sequence[int],
    detections: Sequence[int],
    horizon: int | None = None,
    max_delay: int | None = None,
) -> DetectionScores:
    """Match detections to true boundaries (steps where a new task began).

    A boundary ``b_k`` is detected by the first detection ``d`` with
    ``b_k <= d < b_{k+1}`` (and ``d − b_k <= max_delay`` if given); all other detections,
    including any before the first boundary, are false alarms. ``horizon`` (the number of steps
    watched) turns the false-alarm count into a rate.
    """
    b = np.asarray(boundaries, dtype=np.int64).reshape(-1)
    d = np.sort(np.asarray(detections, dtype=np.int64).reshape(-1))
    if np.any(np.diff(b) <= 0) or np.any(b < 0):
        raise ValueError(f"boundaries must be strictly increasing and >= 0, got {b.tolist()}")
    if np.any(d < 0):
        raise ValueError("detections must be >= 0")
    if horizon is not None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if (b.size and b[-1] >= horizon) or (d.size and d[-1] >= horizon):
            raise ValueError(f"boundaries and detections must lie in [0, horizon={horizon})")
    if max_delay is not None and max_delay < 0:
        raise ValueError(f"max_delay must be >= 0, got {max_delay}")
    delays: list[int | None] = []
    matched = np.zeros(d.size, dtype=bool)
    for k, start in enumerate(b):
        end = b[k + 1] if k + 1 < b.size else np.iinfo(np.int64).max
        if max_delay is not None:
            end = min(end, start + max_delay + 1)
        hit = np.flatnonzero((d >= start) & (d < end))
        if hit.size:
            matched[hit[0]] = True
            delays.append(int(d[hit[0]] - start))
        else:
            delays.append(None)
    found = [x for x in delays if x is not None]
    fa = int((~matched).sum())
    return DetectionScores(
        delays=delays,
        mean_delay=float(np.mean(found)) if found else float("nan"),
        missed=sum(x is None for x in delays),
        false_alarms=fa,
        false_alarm_rate=None if horizon is None else fa / horizon,
    )


# -- plots -----------------------------------------------------------------------------------------
def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buf.getvalue())


def _names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"need {n} task names, got {len(names)}")
    return [str(x) for x in names]


def plot_performance_matrix(
    R, path: str | Path, task_names: Sequence[str] | None = None, title: str = ""
) -> Path:
    """Heatmap of ``R[i, j]`` (rows: after stage i; columns: task j), values annotated, written
    atomically to the PNG ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    arr = check_performance_matrix(R)
    n = arr.shape[0]
    names = _names(task_names, n)
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.5 * n))
    ax = fig.add_subplot()
    im = ax.imshow(arr, cmap="viridis", vmin=min(0.0, arr.min()), vmax=max(1.0, arr.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=60, ha="right")
    ax.set_yticks(range(n), [f"after {x}" for x in names])
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("stage i")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{arr[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if arr[i, j] < 0.5 * (arr.max() + arr.min()) else "k",
                )
    ax.set_title(title or "performance matrix R[i, j]")
    return _save(fig, path)


def plot_task_curves(
    steps,
    curves,
    path: str | Path,
    boundaries: Sequence[int] | None = None,
    task_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Each task's performance along the whole sequence (``curves (N tasks, E points)`` at
    ``steps (E,)``), the average dashed, stage boundaries as vertical lines; PNG at ``path``."""
    import matplotlib
    from matplotlib.figure import Figure

    x = np.asarray(steps, dtype=np.float64).reshape(-1)
    arr = np.asarray(curves, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != x.size or x.size == 0:
        raise ValueError(f"curves must be (N tasks, E={x.size} points), got {arr.shape}")
    names = _names(task_names, arr.shape[0])
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab20"]
    for j, (row, name) in enumerate(zip(arr, names)):
        ax.plot(x, row, color=cmap(j % 20), lw=1.2, label=name)
    ax.plot(x, arr.mean(axis=0), color="k", lw=2, ls="--", label="average")
    for b in boundaries or ():
        ax.axvline(b, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("performance")
    ax.set_title(title or "per-task performance across the sequence")
    ax.legend(
        fontsize=7, ncol=2 if arr.shape[0] > 10 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    return _save(fig, path)


def performance_matrix_from_curves(
    curves, eval_steps: Sequence[int], stage_ends: Sequence[int]
) -> np.ndarray:
    """``R[i, j]`` read off ``curves (N, E)`` at the last evaluation at or before each stage's
    end step."""
    arr = np.asarray(curves, dtype=np.float64)
    x = np.asarray(eval_steps).reshape(-1)
    if arr.ndim != 2 or arr.shape[1] != x.size:
        raise ValueError(f"curves must be (N, E={x.size}), got {arr.shape}")
    if len(stage_ends) != arr.shape[0]:
        raise ValueError(f"need one stage end per task, got {len(stage_ends)}")
    cols = np.searchsorted(x, np.asarray(stage_ends), side="right") - 1
    if np.any(cols < 0):
        raise ValueError("a stage ends before the first evaluation")
    return check_performance_matrix(arr[:, cols].T)


def summarize(R, curves=None, reference_curves=None, steps=None) -> Mapping[str, float]:
    """The headline numbers: average performance, forgetting and (given curves) forward
    transfer, as a flat dict for a metrics log."""
    out = {"average_performance": average_performance(R), "forgetting": forgetting(R)[0]}
    if curves is not None and reference_curves is not None:
        out["forward_transfer"] = forward_transfer(curves, reference_curves, steps)[0]
    return out
