"""The storage under :class:`continual.replay.ReplayBuffer`: the ring of per-field arrays (in
memory or ``.npy`` memmaps) and the stage-proportional allocation of a batch's draws
(:func:`allocate_counts`, largest-remainder rounding with per-pool caps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["RingArrays", "allocate_counts"]


def allocate_counts(total: int, weights: np.ndarray, caps: np.ndarray | None = None) -> np.ndarray:
    """Whole-number counts summing to ``total`` in proportion to ``weights``, none above its
    cap.

    Largest-remainder rounding (ties to the lower index). What a capped pool cannot take goes to
    the others in proportion to their weights, or, where every uncapped pool has weight 0, to
    their caps (sizes). Raises if the caps cannot hold ``total``.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    cap = np.full(w.size, total, np.int64) if caps is None else np.asarray(caps, np.int64)
    if cap.size != w.size or np.any(cap < 0):
        raise ValueError("caps must be one non-negative int per weight")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if cap.sum() < total:
        raise ValueError(f"the caps hold {int(cap.sum())} < {total}")
    counts = np.zeros(w.size, dtype=np.int64)
    remaining = int(total)
    while remaining > 0:
        open_ = counts < cap
        share = np.where(open_, w, 0.0)
        if share.sum() <= 0:  # only zero-weight pools have room: fill them by size
            share = np.where(open_, cap.astype(np.float64), 0.0)
        exact = remaining * share / share.sum()
        give = np.floor(exact).astype(np.int64)
        left = remaining - int(give.sum())
        if left > 0:  # largest remainders first; stable sort keeps ties in index order
            order = np.argsort(-(exact - give), kind="stable")
            order = order[share[order] > 0][:left]
            give[order] += 1
        give = np.minimum(give, cap - counts)
        counts += give
        remaining -= int(give.sum())
    return counts


class RingArrays:
    """Preallocated per-field arrays of ``capacity`` rows, in memory or as .npy memmaps."""

    def __init__(self, capacity: int, directory: str | None):
        self.capacity = capacity
        self.directory = None if directory is None else Path(directory)
        self.arrays: dict[str, np.ndarray] = {}

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        full = (self.capacity, *shape)
        if self.directory is None:
            arr = np.zeros(full, dtype=dtype)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / (name.replace("/", "__") + ".npy")
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=full)
        self.arrays[name] = arr
        return arr

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Rows ``start .. start + len(values)`` (mod capacity) <- values (at most 2 copies)."""
        arr, n = self.arrays[name], len(values)
        first = min(n, self.capacity - start)
        arr[start : start + first] = values[:first]
        if first < n:
            arr[: n - first] = values[first:]

    def flush(self) -> None:
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))
