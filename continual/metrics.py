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


# Okabe & Ito's colour-blind-safe palette (8 colours); longer sequences fall back to tab20
OKABE_ITO = (
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#000000",
)


def task_colors(n: int) -> list:
    """``n`` distinguishable colours: Okabe-Ito up to 8 tasks, tab20 beyond."""
    import matplotlib

    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    cmap = matplotlib.colormaps["tab20"]
    return [cmap(j % 20) for j in range(n)]


def _shade_stages(ax, boundaries, x_end: float, names: Sequence[str], colors: Sequence) -> None:
    """Stage ``s`` spans ``[start_s, start_{s+1})`` (``boundaries`` are the starts of stages
    1..N-1): shaded in the colour of the task it trains, a line where it begins, its name on top."""
    starts = [0.0, *[float(b) for b in boundaries]]
    ends = [*starts[1:], float(x_end)]
    for s, (a, b) in enumerate(zip(starts, ends)):
        if s >= len(names) or b <= a:
            continue
        ax.axvspan(a, b, color=colors[s], alpha=0.10, lw=0)
        if s:
            ax.axvline(a, color="0.35", lw=0.9, ls="--")
        ax.text(
            (a + b) / 2,
            1.01,
            f"training: {names[s]}" if len(names) <= 6 else names[s],
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.25",
            clip_on=False,
        )


def plot_task_curves(
    steps,
    curves,
    path: str | Path,
    boundaries: Sequence[int] | None = None,
    task_names: Sequence[str] | None = None,
    title: str = "",
    lower=None,
    upper=None,
) -> Path:
    """Each task's performance along the whole sequence (``curves (N tasks, E points)`` at
    ``steps (E,)``), the average dashed. Each stage is shaded in the colour of the task it trains,
    with a dashed line where it begins (``boundaries``: the start steps of stages 1..N-1). With
    ``lower``/``upper`` (same shape as ``curves``) each curve gets a band, e.g. a 95% CI over
    seeds. PNG at ``path``."""
    from matplotlib.figure import Figure

    x = np.asarray(steps, dtype=np.float64).reshape(-1)
    arr = np.asarray(curves, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != x.size or x.size == 0:
        raise ValueError(f"curves must be (N tasks, E={x.size} points), got {arr.shape}")
    bands = None
    if lower is not None or upper is not None:
        bands = (np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64))
        if bands[0].shape != arr.shape or bands[1].shape != arr.shape:
            raise ValueError(f"lower and upper must have the curves' shape {arr.shape}")
    names = _names(task_names, arr.shape[0])
    colors = task_colors(arr.shape[0])
    fig = Figure(figsize=(9.5, 4.2))
    ax = fig.add_subplot()
    _shade_stages(ax, boundaries or (), x[-1], names, colors)
    for j, (row, name) in enumerate(zip(arr, names)):
        ax.plot(x, row, color=colors[j], lw=1.4, label=name)
        if bands is not None:
            ax.fill_between(x, bands[0][j], bands[1][j], color=colors[j], alpha=0.18, lw=0)
    ax.plot(x, arr.mean(axis=0), color="0.2", lw=2, ls="--", label="average")
    ax.set_xlabel("env step")
    ax.set_ylabel("performance" + (" (mean, 95% CI band)" if bands is not None else ""))
    ax.set_title(title or "per-task performance across the sequence", pad=16)
    ax.set_xlim(x[0] if x[0] < 0 else 0, x[-1])
    ax.legend(
        fontsize=7, ncol=2 if arr.shape[0] > 10 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    return _save(fig, path)


def plot_training_curve(
    steps,
    values,
    path: str | Path,
    boundaries: Sequence[int] | None = None,
    stage_names: Sequence[str] | None = None,
    ylabel: str = "training return",
    title: str = "",
    window: int = 5,
) -> Path:
    """The training return per iteration (dots) and its moving average over ``window``
    iterations (line) against env steps, with the stages shaded as in :func:`plot_task_curves`.
    PNG at ``path``."""
    from matplotlib.figure import Figure

    x = np.asarray(steps, dtype=np.float64).reshape(-1)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size != y.size or x.size == 0:
        raise ValueError(
            f"steps and values must be equally long and non-empty, got {x.size}, {y.size}"
        )
    names = list(stage_names or [])
    colors = task_colors(max(len(names), 1))
    fig = Figure(figsize=(9.5, 3.6))
    ax = fig.add_subplot()
    _shade_stages(ax, boundaries or (), x[-1], names, colors)
    ax.plot(x, y, ".", color="0.55", ms=3, label="iteration")
    finite = np.isfinite(y)
    if finite.sum() >= 2:
        k = max(1, min(window, int(finite.sum())))
        yf = y[finite]
        smooth = np.convolve(yf, np.ones(k) / k, mode="valid")
        ax.plot(x[finite][k - 1 :], smooth, color="#0072B2", lw=1.8, label=f"mean of {k}")
    ax.set_xlabel("env step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "training return", pad=16)
    ax.set_xlim(0, x[-1])
    ax.legend(fontsize=7, loc="lower right")
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
