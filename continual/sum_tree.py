"""``SumTree``: array-based sum- and min-trees over priorities, batched over several trees at once.

A tree of capacity ``C`` (padded to ``P = 2^ceil(log2 C)`` leaves) lives in one row of a
``(num_trees, 2P)`` float64 array, heap-ordered: node ``n`` has children ``2n`` and ``2n + 1``,
the root is node 1 and leaf ``i`` is node ``P + i``::

    sum[n] = sum[2n] + sum[2n + 1]          min[n] = min(min[2n], min[2n + 1])

Empty leaves hold 0 in the sum-tree and +inf in the min-tree. Every operation works on a whole
batch: an update writes its leaves and then recomputes the touched parents one level at a time
(``log2 P`` vectorised steps), and :meth:`find_prefix` descends the tree for all targets at once,
level by level, so a batch costs ``O(batch · log P)`` numpy work in ``log P`` calls. Several trees
share the arrays (one per replay stage), and one descent can serve targets in different trees.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SumTree"]


def _as_index(name: str, value, size: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False).reshape(-1)
    if size is not None and arr.size != size:
        raise ValueError(f"{name} must have {size} entries, got {arr.size}")
    return arr


class SumTree:
    """``num_trees`` sum-trees (with min-trees alongside) of ``capacity`` leaves each.

    Args:
        capacity: leaves per tree (>= 1).
        num_trees: independent trees sharing the storage (rows); :meth:`add_trees` adds more.
    """

    def __init__(self, capacity: int, num_trees: int = 1):
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not isinstance(num_trees, (int, np.integer)) or num_trees < 0:
            raise ValueError(f"num_trees must be a non-negative int, got {num_trees!r}")
        self.capacity = int(capacity)
        self.depth = max(0, int(np.ceil(np.log2(self.capacity))))
        self.leaf_offset = 1 << self.depth  # P
        self._sum = np.zeros((int(num_trees), 2 * self.leaf_offset), dtype=np.float64)
        self._min = np.full((int(num_trees), 2 * self.leaf_offset), np.inf, dtype=np.float64)

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def num_trees(self) -> int:
        return int(self._sum.shape[0])

    def add_trees(self, n: int = 1) -> None:
        """Append ``n`` empty trees (rows)."""
        width = 2 * self.leaf_offset
        self._sum = np.concatenate([self._sum, np.zeros((n, width))], axis=0)
        self._min = np.concatenate([self._min, np.full((n, width), np.inf)], axis=0)

    @property
    def nbytes(self) -> int:
        return int(self._sum.nbytes + self._min.nbytes)

    # -- reads ----------------------------------------------------------------------------------
    def _rows(self, tree, n: int | None = None) -> np.ndarray:
        rows = _as_index("tree", tree)
        if n is not None and rows.size == 1 and n != 1:
            rows = np.full(n, rows[0], dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_trees):
            raise ValueError(f"tree index out of range [0, {self.num_trees}): {rows}")
        return rows

    def total(self, tree=0) -> np.ndarray | float:
        """Sum of the leaves of ``tree`` (an int, or an array of tree indices)."""
        out = self._sum[self._rows(tree), 1]
        return float(out[0]) if np.ndim(tree) == 0 else out

    def min(self, tree=0) -> np.ndarray | float:
        """Smallest non-empty leaf of ``tree`` (+inf when the tree is empty)."""
        out = self._min[self._rows(tree), 1]
        return float(out[0]) if np.ndim(tree) == 0 else out

    def leaves(self, tree: int = 0) -> np.ndarray:
        """A copy of the ``capacity`` leaf values of ``tree`` (0 where empty)."""
        row = int(self._rows(tree)[0])
        return self._sum[row, self.leaf_offset : self.leaf_offset + self.capacity].copy()

    def get(self, tree, index) -> np.ndarray:
        idx = self._check_leaves(index)
        return self._sum[self._rows(tree, idx.size), self.leaf_offset + idx]

    # -- writes ---------------------------------------------------------------------------------
    def _check_leaves(self, index) -> np.ndarray:
        idx = _as_index("index", index)
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
            raise ValueError(f"leaf index out of range [0, {self.capacity})")
        return idx

    def update(self, tree, index, values) -> None:
        """Set leaves ``index`` of trees ``tree`` to ``values`` (>= 0, finite; 0 empties a leaf).

        ``tree`` is an int or one tree index per leaf. Where a (tree, leaf) pair repeats, the last
        value wins. Parents are recomputed level by level for the touched paths only.
        """
        idx = self._check_leaves(index)
        rows = self._rows(tree, idx.size)
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        if vals.size == 1 and idx.size != 1:
            vals = np.full(idx.size, vals[0])
        if vals.size != idx.size or rows.size != idx.size:
            raise ValueError(
                f"tree, index and values must have matching sizes, got {rows.size}, {idx.size}, "
                f"{vals.size}"
            )
        if not np.all(np.isfinite(vals)) or np.any(vals < 0):
            raise ValueError("priorities must be finite and >= 0")
        if idx.size == 0:
            return
        width = 2 * self.leaf_offset
        # last write wins: unique over the reversed keys keeps each key's last occurrence
        keys = rows * width + self.leaf_offset + idx
        _, last = np.unique(keys[::-1], return_index=True)
        keep = keys.size - 1 - last
        rows, nodes, vals = rows[keep], (self.leaf_offset + idx)[keep], vals[keep]
        self._sum[rows, nodes] = vals
        self._min[rows, nodes] = np.where(vals > 0, vals, np.inf)
        for _ in range(self.depth):
            keys = np.unique(rows * width + nodes // 2)
            rows, nodes = keys // width, keys % width
            left, right = 2 * nodes, 2 * nodes + 1
            self._sum[rows, nodes] = self._sum[rows, left] + self._sum[rows, right]
            self._min[rows, nodes] = np.minimum(self._min[rows, left], self._min[rows, right])

    def clear(self, tree: int | None = None) -> None:
        """Empty one tree, or all of them."""
        rows = slice(None) if tree is None else int(self._rows(tree)[0])
        self._sum[rows] = 0.0
        self._min[rows] = np.inf

    # -- sampling -------------------------------------------------------------------------------
    def find_prefix(self, tree, targets) -> np.ndarray:
        """For each target ``u`` (``0 <= u < total``), the leaf ``i`` with
        ``sum(leaves[:i]) <= u < sum(leaves[:i + 1])``, found by one vectorised descent.

        The descent never enters an empty subtree (it goes right only where the right child's sum
        is positive), so the result is always a non-empty leaf, even where rounding pushes ``u``
        past a subtree's sum.
        """
        u = np.array(targets, dtype=np.float64).reshape(-1)
        rows = self._rows(tree, u.size)
        totals = self._sum[rows, 1]
        if np.any(totals <= 0):
            raise ValueError("cannot sample from an empty tree (total priority 0)")
        if np.any(u < 0) or not np.all(np.isfinite(u)):
            raise ValueError("targets must be finite and >= 0")
        node = np.ones(u.size, dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * node
            left_sum = self._sum[rows, left]
            go_right = (u >= left_sum) & (self._sum[rows, left + 1] > 0)
            u = np.where(go_right, u - left_sum, u)
            node = np.where(go_right, left + 1, left)
        return node - self.leaf_offset

    # -- persistence ----------------------------------------------------------------------------
    def load_leaves(self, leaves: np.ndarray) -> None:
        """Rebuild every tree from a ``(num_trees, capacity)`` array of leaf values."""
        leaves = np.asarray(leaves, dtype=np.float64)
        if leaves.shape != (self.num_trees, self.capacity):
            raise ValueError(
                f"leaves must have shape {(self.num_trees, self.capacity)}, got {leaves.shape}"
            )
        if not np.all(np.isfinite(leaves)) or np.any(leaves < 0):
            raise ValueError("priorities must be finite and >= 0")
        self.clear()
        P = self.leaf_offset
        self._sum[:, P : P + self.capacity] = leaves
        self._min[:, P : P + self.capacity] = np.where(leaves > 0, leaves, np.inf)
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 1 << (level + 1)
            self._sum[:, lo:hi] = (
                self._sum[:, 2 * lo : 2 * hi : 2] + self._sum[:, 2 * lo + 1 : 2 * hi : 2]
            )
            self._min[:, lo:hi] = np.minimum(
                self._min[:, 2 * lo : 2 * hi : 2], self._min[:, 2 * lo + 1 : 2 * hi : 2]
            )

    def all_leaves(self) -> np.ndarray:
        """A ``(num_trees, capacity)`` copy of every leaf."""
        P = self.leaf_offset
        return self._sum[:, P : P + self.capacity].copy()
