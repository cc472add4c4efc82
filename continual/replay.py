"""Prioritized, stage-proportional replay of fixed-length chunks of recurrent trajectories.

**Storage.** Transitions live in one preallocated ring of ``capacity`` steps, one flat array per
field, in the field's own dtype (uint8 frames stay uint8, bools stay one byte): ``obs`` is a
``(capacity, *obs_shape)`` array. The arrays are in memory, or ``.npy`` memmaps on disk for large
buffers. An *item* is a chunk of ``burn_in + seq_len`` consecutive steps of one sequence: it is
only a record (start position, stage, task, priority) plus the policy state at its first step,
so overlapping chunks cost no extra storage. Sampling draws item slots and gathers
``start + arange(L)`` (mod capacity) from every field with one ``np.take`` each, into the
``(L, B, ...)`` layout of :class:`metarl.Trajectory`. An item is evicted as soon as the ring
overwrites its first step, so a sampled chunk is always intact.

**Recurrent state (R2D2, Kapturowski et al. 2019).** Each item stores the policy state at its
first step; the learner replays the ``burn_in`` steps without gradient to refresh that state and
trains on the last ``seq_len`` steps (``ReplayBatch.burn_in`` says where they start). With a
``policy``, :meth:`ReplayBuffer.add_trajectory` recomputes the state at every chunk start by
running the policy over the trajectory in sequence mode (the "stored state" strategy). Without
one, the first chunk of each sequence gets ``traj.initial_state`` and later chunks the zero state,
which is exact only where an episode starts at the chunk's first step (the "zero state" strategy;
use a burn-in).

**Stages.** Every item carries a stage id (a curriculum stage or a task). A batch of ``B``
draws ``current_fraction · B`` items from the current stage and the rest from older stages,
split by their sizes (``old_split="size"``) or by recency (``"recency"``: the k-th most recent
old stage weighs ``recency_decay^k``). Counts are whole numbers by the largest-remainder method.
No pool gives more draws than it holds items; what a pool cannot give is topped up from the
others in proportion to their weights (then to their sizes), and only when the whole buffer holds
fewer than ``B`` items do pools give repeats.

**Priorities (Schaul et al. 2016) act within a stage**: one sum-tree per stage holds
``p_i^α`` with ``p_i = priority_i + priority_eps``; the draws a stage gets are made from its
tree (stratified: one uniform draw in each of ``n_s`` equal segments of its total), so within a
stage ``P_s(i) = p_i^α / Σ_{j∈s} p_j^α``. New items get the largest priority seen so far.
Importance weights correct the prioritisation within each stage, with ``N_s`` the stage's item
count, and are normalised by one buffer-wide constant (the largest weight any stored item could
get, from the per-stage min-trees)::

    w_i = (N_s · P_s(i))^-β / max_{s'} max_{j∈s'} (N_{s'} · P_{s'}(j))^-β

Because the constant is shared by all stages, at β = 1 the weighted batch is, in expectation,
uniform within each stage and keeps the configured stage proportions. The stage mixture itself
is a choice, not a bias, and is not corrected. β anneals linearly from ``beta`` to
``beta_final`` over ``beta_anneal_samples`` calls to :meth:`ReplayBuffer.sample`.

**Snapshots.** :meth:`ReplayBuffer.state_dict` returns plain tensors and JSON-able metadata with a
schema version (what ``torch.load(weights_only=True)`` reads); restoring it and sampling with an
equally seeded ``torch.Generator`` gives identical batches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from metarl.trajectory import Trajectory

from .chunk_states import chunk_start_states
from .replay_storage import RingArrays, allocate_counts
from .sum_tree import SumTree

__all__ = [
    "SCHEMA_VERSION",
    "TRAJECTORY_FIELDS",
    "ReplayBatch",
    "ReplayBuffer",
    "ReplayConfig",
    "allocate_counts",
]

SCHEMA_VERSION = 1

# The (T, B) fields of a Trajectory, plus ``next_values`` (V of the step after, ``last_value`` at
# the end): what a replayed chunk needs to become a Trajectory again.
TRAJECTORY_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Trajectory) if f.metadata["layout"] == "tb"
) + ("next_values",)


@dataclass
class ReplayConfig:
    """Replay hyperparameters (see the module docstring for the sampling rules)."""

    capacity: int = 1_000_000
    """transitions (steps) the ring holds"""
    seq_len: int = 64
    """steps per item that the learner trains on"""
    burn_in: int = 0
    """steps before them, replayed only to refresh the recurrent state (R2D2)"""
    stride: int | None = None
    """distance between the starts of consecutive chunks of a sequence (None: seq_len)"""
    alpha: float = 0.6
    """priority exponent α (0: uniform within a stage)"""
    beta: float = 0.4
    """importance-weight exponent β at the first sample() call"""
    beta_final: float = 1.0
    """β after annealing"""
    beta_anneal_samples: int = 100_000
    """sample() calls over which β goes linearly from beta to beta_final"""
    priority_eps: float = 1e-6
    """added to every priority, so no item becomes unsampleable (with 0, items of priority 0
    are never drawn)"""
    current_fraction: float = 0.5
    """share of a batch drawn from the current stage"""
    old_split: Literal["size", "recency"] = "size"
    """how the old-stage share is split: by stage size, or by recency"""
    recency_decay: float = 0.5
    """with old_split=recency, the k-th most recent old stage weighs recency_decay**k"""
    storage: Literal["memory", "memmap"] = "memory"
    """transition arrays in memory, or as .npy memmaps under `directory`"""
    directory: str | None = None
    """folder for the memmap files (storage=memmap)"""
    fields: tuple[str, ...] | None = None
    """Trajectory fields add_trajectory stores (None: TRAJECTORY_FIELDS, all of them)"""
    max_items: int | None = None
    """item records (and stored states) to preallocate; None: a bound that is never reached"""

    @property
    def chunk_len(self) -> int:
        return self.burn_in + self.seq_len

    @property
    def chunk_stride(self) -> int:
        return self.seq_len if self.stride is None else self.stride

    @property
    def item_capacity(self) -> int:
        """``max_items``, or an upper bound on the items alive at once: chunk starts every
        ``stride`` steps plus a tail chunk per sequence, sequences being >= L long. The bound
        is ~3x what sequences of T >> L need, and each item stores a policy state: set
        ``max_items`` (e.g. ``capacity // stride`` plus a margin) where states are large. When
        the table is full, the oldest items are dropped (their steps stay, unsampled)."""
        if self.max_items is not None:
            return self.max_items
        return self.capacity // self.chunk_stride + 2 * (self.capacity // self.chunk_len) + 8

    def validate(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")

        positive_int("capacity", self.capacity)
        positive_int("seq_len", self.seq_len)
        positive_int("burn_in", self.burn_in, 0)
        if self.stride is not None:
            positive_int("stride", self.stride)
        positive_int("beta_anneal_samples", self.beta_anneal_samples)
        if self.max_items is not None:
            positive_int("max_items", self.max_items)
        if self.chunk_len > self.capacity:
            raise ValueError(
                f"burn_in + seq_len = {self.chunk_len} exceeds capacity {self.capacity}"
            )
        for name in ("alpha", "beta", "beta_final", "priority_eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not 0.0 <= self.current_fraction <= 1.0:
            raise ValueError(f"current_fraction must be in [0, 1], got {self.current_fraction}")
        if self.old_split not in ("size", "recency"):
            raise ValueError(f"old_split must be 'size' or 'recency', got {self.old_split!r}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay}")
        if self.storage not in ("memory", "memmap"):
            raise ValueError(f"storage must be 'memory' or 'memmap', got {self.storage!r}")
        if self.storage == "memmap" and not self.directory:
            raise ValueError("storage='memmap' needs a directory for its files")
        if self.fields is not None:
            unknown = sorted(set(self.fields) - set(TRAJECTORY_FIELDS))
            if unknown:
                raise ValueError(
                    f"unknown fields {unknown}; add_trajectory can store {TRAJECTORY_FIELDS}"
                )


@dataclass
class ReplayBatch:
    """A sampled batch of ``B`` chunks of ``L = burn_in + seq_len`` steps."""

    data: dict[str, Tensor]
    """field -> (L, B, ...) tensor, in the stored dtype"""
    initial_state: Any
    """the policy state before each chunk's first step: a pytree of (B, ...) tensors (or None)"""
    weights: Tensor
    """(B,) float32 importance weights (<= 1)"""
    keys: Tensor
    """(B,) int64 item keys, for :meth:`ReplayBuffer.update_priorities`"""
    stages: Tensor
    """(B,) int64 stage id of each chunk"""
    task_ids: Tensor
    """(B,) int64 task id of each chunk"""
    burn_in: int
    """steps [0, burn_in) only refresh the state; train on [burn_in, L)"""
    beta: float
    """the β the weights were computed with"""

    def to_trajectory(self) -> Trajectory:
        """The batch as a :class:`metarl.Trajectory` (``T = L``), so that
        :func:`metarl.objectives.policy_evaluate` can re-run a policy over it.

        ``last_value`` is ``next_values`` at the last step; ``start_returns`` is zero, so
        ``episode_returns()`` counts only rewards inside the chunk. Needs every field of
        :data:`TRAJECTORY_FIELDS` and a stored state.
        """
        missing = [f for f in TRAJECTORY_FIELDS if f not in self.data]
        if missing:
            raise ValueError(f"to_trajectory needs the fields {missing}, which are not stored")
        if self.initial_state is None:
            raise ValueError("to_trajectory needs stored initial states; none were stored")
        fields = {f: self.data[f] for f in TRAJECTORY_FIELDS if f != "next_values"}
        values = self.data["values"]
        return Trajectory(
            **fields,
            last_value=self.data["next_values"][-1],
            start_returns=torch.zeros(values.shape[1], dtype=torch.float64),
            task_ids=self.task_ids,
            initial_state=self.initial_state,
        )


def _to_numpy(name: str, value: Any, sequence_ok: bool = False) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if sequence_ok and isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _stage_ids(stage: Any, B: int) -> np.ndarray:
    if isinstance(stage, (bool, np.bool_)):
        raise ValueError(f"stage must be an int or B={B} ints, got {stage!r}")
    if isinstance(stage, (int, np.integer)):
        return np.full(B, int(stage), dtype=np.int64)
    arr = _to_numpy("stage", stage) if isinstance(stage, Tensor) else np.asarray(stage)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer) or arr.shape != (B,):
        raise ValueError(
            f"stage must be an int or B={B} ints, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr.astype(np.int64)


class ReplayBuffer:
    """Prioritized, stage-proportional replay of recurrent sequence chunks.

    Args:
        config: a :class:`ReplayConfig`.

    Typical use::

        buf = ReplayBuffer(ReplayConfig(capacity=1_000_000, seq_len=64, burn_in=16))
        buf.add_trajectory(traj, stage=2, policy=policy)         # chunks + recomputed states
        batch = buf.sample(256, generator)                        # (80, 256, ...) fields
        ... loss_i on batch.data[...][batch.burn_in:], weighted by batch.weights ...
        buf.update_priorities(batch.keys, td_error_per_chunk)
    """

    def __init__(self, config: ReplayConfig | None = None):
        self.config = ReplayConfig() if config is None else config
        self.config.validate()
        cfg = self.config
        self.capacity, self.L, self.stride = cfg.capacity, cfg.chunk_len, cfg.chunk_stride
        self.item_capacity = cfg.item_capacity
        directory = cfg.directory if cfg.storage == "memmap" else None
        self._ring = RingArrays(cfg.capacity, directory)
        self._items = RingArrays(
            self.item_capacity, None if directory is None else str(Path(directory) / "items")
        )
        self._specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._state_spec: pytree.TreeSpec | None = None
        self._state_leaf_specs: list[tuple[tuple[int, ...], np.dtype]] = []
        # item records (the state leaves live in self._items as "state/<i>")
        M = self.item_capacity
        self._item_key = np.full(M, -1, dtype=np.int64)
        self._item_start = np.zeros(M, dtype=np.int64)
        self._item_row = np.zeros(M, dtype=np.int64)
        self._item_task = np.zeros(M, dtype=np.int64)
        self._tree = SumTree(M, 0)
        # stage table, one row per stage id in order of first appearance
        self._stage_ids: list[int] = []
        self._stage_row: dict[int, int] = {}
        self._stage_last_add: list[int] = []
        self._stage_count = np.zeros(0, dtype=np.int64)
        self._current: int | None = None
        # counters
        self._transitions_added = 0  # global position of the next transition
        self._items_added = 0  # key of the next item
        self._tail = 0  # key of the oldest item alive
        self._adds = 0
        self._samples = 0
        self._max_priority = 1.0

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Items (chunks) alive."""
        return int(self._items_added - self._tail)

    @property
    def num_transitions(self) -> int:
        """Steps held in the ring."""
        return min(self._transitions_added, self.capacity)

    @property
    def current_stage(self) -> int | None:
        """The stage batches draw ``current_fraction`` from: the stage of the last sequence
        added, unless :meth:`set_current_stage` chose another since."""
        return self._current

    def set_current_stage(self, stage: int) -> None:
        if int(stage) not in self._stage_row:
            raise ValueError(f"unknown stage {stage}; known stages: {self._stage_ids}")
        self._current = int(stage)

    def stage_sizes(self) -> dict[int, int]:
        """Stage id -> items alive (stages whose items were all evicted report 0)."""
        return {s: int(self._stage_count[r]) for s, r in self._stage_row.items()}

    @property
    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Stored field -> (per-step shape, dtype)."""
        return dict(self._specs)

    @property
    def nbytes(self) -> int:
        """Bytes held: transition arrays, item records and states, and the priority trees."""
        records = sum(a.nbytes for a in (self._item_key, self._item_start, self._item_row))
        return int(
            self._ring.nbytes
            + self._items.nbytes
            + records
            + self._item_task.nbytes
            + self._tree.nbytes
        )

    def chunk_starts(self, T: int) -> np.ndarray:
        """Start steps of the chunks cut from a sequence of ``T`` steps: every ``stride`` steps
        while a whole chunk fits, plus a last chunk ending at ``T`` if the tail is not covered."""
        if T < self.L:
            raise ValueError(
                f"sequences must have at least burn_in + seq_len = {self.L} steps, got T={T}"
            )
        starts = np.arange(0, T - self.L + 1, self.stride, dtype=np.int64)
        if starts[-1] + self.L < T:
            starts = np.append(starts, T - self.L)
        return starts

    # -- adding ---------------------------------------------------------------------------------
    def add_trajectory(
        self,
        traj: Trajectory,
        stage: int | Sequence[int] | Tensor,
        policy: torch.nn.Module | None = None,
        params: Mapping[str, Tensor] | None = None,
    ) -> int:
        """Cut each of the ``B`` sequences of ``traj`` into chunks and store them under ``stage``
        (an int, or one per sequence). Returns the number of items added.

        With ``policy`` (and optionally functional ``params``), the state at every chunk start is
        recomputed by running the policy over the trajectory in sequence mode from
        ``traj.initial_state``, honouring ``resets`` and the in-context inputs. Without it, chunk
        0 of each sequence gets ``traj.initial_state`` and later chunks the zero state.
        """
        if not isinstance(traj, Trajectory):
            raise ValueError(f"traj must be a metarl Trajectory, got {type(traj).__name__}")
        names = self.config.fields or TRAJECTORY_FIELDS
        data: dict[str, Any] = {}
        for name in names:
            if name == "next_values":
                data[name] = torch.cat([traj.values[1:], traj.last_value[None]], dim=0)
            else:
                data[name] = getattr(traj, name)
        starts = self.chunk_starts(traj.T)
        if policy is None:
            states = pytree.tree_map(
                lambda s: torch.cat(
                    [s[:, None], s.new_zeros(s.shape[0], len(starts) - 1, *s.shape[1:])], dim=1
                ),
                traj.initial_state,
            )
        else:
            states = chunk_start_states(policy, traj, starts, params)
        return self.add_sequences(data, stage, states=states, task_ids=traj.task_ids)

    def add_sequences(
        self,
        data: Mapping[str, Tensor | np.ndarray],
        stage: int | Sequence[int] | Tensor,
        states: Any = None,
        task_ids: Tensor | np.ndarray | None = None,
        priorities: Tensor | np.ndarray | None = None,
    ) -> int:
        """Store ``B`` sequences given as ``field -> (T, B, ...)`` arrays, cut into chunks at
        :meth:`chunk_starts`. Returns the number of items added.

        ``states``: a pytree whose leaves are ``(B, K, ...)``, the policy state at each of the
        ``K`` chunk starts (or None for a buffer without states). ``task_ids``: ``(B,)`` ints
        (default 0). ``priorities``: ``(B, K)`` initial priorities (default: the largest seen).
        The first call fixes the fields, their shapes and dtypes; later calls must match.
        """
        if not isinstance(data, Mapping) or not data:
            raise ValueError("data must be a non-empty mapping field -> (T, B, ...) array")
        arrays = {name: _to_numpy(f"data[{name!r}]", v) for name, v in data.items()}
        first = next(iter(arrays.values()))
        if first.ndim < 2:
            raise ValueError(f"fields must be (T, B, ...), got shape {first.shape}")
        T, B = first.shape[:2]
        for name, arr in arrays.items():
            if arr.ndim < 2 or arr.shape[:2] != (T, B):
                raise ValueError(
                    f"every field must be (T={T}, B={B}, ...); {name!r} has shape {arr.shape}"
                )
        if B < 1:
            raise ValueError("data holds no sequences (B = 0)")
        n_new = T * B
        if n_new > self.capacity:
            raise ValueError(f"{n_new} transitions (T*B) exceed the capacity {self.capacity}")
        starts = self.chunk_starts(T)
        K = len(starts)
        stage_ids = _stage_ids(stage, B)
        tasks = (
            np.zeros(B, dtype=np.int64)
            if task_ids is None
            else _to_numpy("task_ids", task_ids, sequence_ok=True).astype(np.int64).reshape(-1)
        )
        if tasks.shape != (B,):
            raise ValueError(f"task_ids must have shape ({B},), got {tasks.shape}")
        leaves, spec = ([], None) if states is None else pytree.tree_flatten(states)
        leaves = [_to_numpy("states", leaf) for leaf in leaves]
        for leaf in leaves:
            if leaf.shape[:2] != (B, K):
                raise ValueError(
                    f"state leaves must be (B={B}, K={K} chunks, ...), got {leaf.shape}"
                )
        if priorities is not None:
            prio = _to_numpy("priorities", priorities, sequence_ok=True).astype(np.float64)
            if prio.shape != (B, K):
                raise ValueError(f"priorities must have shape ({B}, {K}), got {prio.shape}")
            if not np.all(np.isfinite(prio)) or np.any(prio < 0):
                raise ValueError("priorities must be finite and >= 0")
        if B * K > self.item_capacity:
            raise ValueError(
                f"this add makes {B * K} items, more than max_items = {self.item_capacity}"
            )
        self._check_or_allocate(arrays, spec, leaves)

        # evict what the new transitions overwrite, and what the new items displace
        m = B * K
        end = self._transitions_added + n_new
        self._evict(lambda start: start < end - self.capacity, extra=m)

        # transitions: sequence b occupies global positions base + b*T + [0, T)
        base = self._transitions_added
        pos = base % self.capacity
        for name, arr in arrays.items():
            flat = np.ascontiguousarray(np.swapaxes(arr, 0, 1)).reshape(n_new, *arr.shape[2:])
            self._ring.write(name, pos, flat)
        self._transitions_added = end

        # items, in increasing start order (sequence-major)
        keys = self._items_added + np.arange(m, dtype=np.int64)
        slots = keys % self.item_capacity
        rows = np.repeat([self._row_for(int(s)) for s in stage_ids], K)
        self._item_key[slots] = keys
        self._item_start[slots] = (base + np.arange(B)[:, None] * T + starts[None, :]).reshape(-1)
        self._item_row[slots] = rows
        self._item_task[slots] = np.repeat(tasks, K)
        for i, leaf in enumerate(leaves):
            self._items.arrays[f"state/{i}"][slots] = leaf.reshape(m, *leaf.shape[2:])
        if priorities is None:
            values = np.full(m, self._leaf_value(self._max_priority))
        else:
            values = self._leaf_value(prio.reshape(-1))
            self._max_priority = max(self._max_priority, float(prio.max()))
        self._tree.update(rows, slots, values)
        np.add.at(self._stage_count, rows, 1)
        self._items_added += m
        self._adds += 1
        for s in np.unique(stage_ids):
            self._stage_last_add[self._stage_row[int(s)]] = self._adds
        self._current = int(stage_ids[-1])
        return m

    def _leaf_value(self, priority):
        return (np.asarray(priority, dtype=np.float64) + self.config.priority_eps) ** (
            self.config.alpha
        )

    def _row_for(self, stage: int) -> int:
        row = self._stage_row.get(stage)
        if row is None:
            row = len(self._stage_ids)
            self._stage_row[stage] = row
            self._stage_ids.append(stage)
            self._stage_last_add.append(0)
            self._stage_count = np.append(self._stage_count, 0)
            self._tree.add_trees(1)
        return row

    def _check_or_allocate(self, arrays: dict[str, np.ndarray], spec, leaves) -> None:
        if not self._specs:
            for name, arr in arrays.items():
                if arr.dtype == object:
                    raise ValueError(f"field {name!r} has dtype object; store numeric arrays")
                self._specs[name] = (tuple(arr.shape[2:]), arr.dtype)
                self._ring.allocate(name, tuple(arr.shape[2:]), arr.dtype)
            self._state_spec = spec
            for i, leaf in enumerate(leaves):
                self._state_leaf_specs.append((tuple(leaf.shape[2:]), leaf.dtype))
                self._items.allocate(f"state/{i}", tuple(leaf.shape[2:]), leaf.dtype)
            return
        if set(arrays) != set(self._specs):
            raise ValueError(
                f"fields {sorted(arrays)} differ from the stored fields {sorted(self._specs)}"
            )
        for name, arr in arrays.items():
            shape, dtype = self._specs[name]
            if tuple(arr.shape[2:]) != shape or arr.dtype != dtype:
                raise ValueError(
                    f"field {name!r}: expected per-step shape {shape} and dtype {dtype}, got "
                    f"{tuple(arr.shape[2:])} and {arr.dtype} (the buffer never casts)"
                )
        if spec != self._state_spec:
            raise ValueError("states have a different structure from the stored states")
        for leaf, (shape, dtype) in zip(leaves, self._state_leaf_specs):
            if tuple(leaf.shape[2:]) != shape or leaf.dtype != dtype:
                raise ValueError(
                    f"state leaf: expected per-item shape {shape} and dtype {dtype}, got "
                    f"{tuple(leaf.shape[2:])} and {leaf.dtype}"
                )

    def _evict(self, overwritten, extra: int) -> None:
        """Drop the oldest items while their first step is ``overwritten``, or while the item
        ring has no room for ``extra`` more."""
        alive = np.arange(self._tail, self._items_added, dtype=np.int64)
        if alive.size == 0:
            return
        gone = overwritten(self._item_start[alive % self.item_capacity])
        n = int(np.argmin(gone)) if not gone.all() else alive.size  # FIFO: a prefix is gone
        n = max(n, alive.size + extra - self.item_capacity)
        if n <= 0:
            return
        slots = alive[:n] % self.item_capacity
        rows = self._item_row[slots]
        self._tree.update(rows, slots, 0.0)
        np.subtract.at(self._stage_count, rows, 1)
        self._item_key[slots] = -1
        self._tail += n

    # -- sampling -------------------------------------------------------------------------------
    def beta_at(self, num_samples: int | None = None) -> float:
        """β after ``num_samples`` sample() calls (default: the calls made so far)."""
        cfg = self.config
        t = self._samples if num_samples is None else num_samples
        frac = min(1.0, t / cfg.beta_anneal_samples)
        return float(cfg.beta + (cfg.beta_final - cfg.beta) * frac)

    def _sampleable_rows(self) -> np.ndarray:
        """Rows of the stages that hold items with a positive total priority."""
        rows = np.flatnonzero(self._stage_count > 0)
        return rows[self._tree.total(rows) > 0] if rows.size else rows

    def stage_weights(self, current_stage: int | None = None) -> dict[int, float]:
        """Stage id -> its share of a batch before capping (stages with items only)."""
        current = self._current if current_stage is None else int(current_stage)
        if current is not None and current not in self._stage_row:
            raise ValueError(f"unknown current stage {current}; known stages: {self._stage_ids}")
        cfg = self.config
        rows = self._sampleable_rows().tolist()
        cur_row = None if current is None else self._stage_row[current]
        old = [r for r in rows if r != cur_row]
        weights = {}
        if cur_row in rows:
            weights[cur_row] = cfg.current_fraction
        if old:
            if cfg.old_split == "size":
                raw = np.array([self._stage_count[r] for r in old], dtype=np.float64)
            else:  # recency: rank 0 = most recently added-to old stage
                order = sorted(old, key=lambda r: -self._stage_last_add[r])
                rank = {r: k for k, r in enumerate(order)}
                raw = np.array([cfg.recency_decay ** rank[r] for r in old])
            for r, v in zip(old, raw / raw.sum()):
                weights[r] = (1.0 - cfg.current_fraction) * float(v)
        return {self._stage_ids[r]: w for r, w in weights.items()}

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        current_stage: int | None = None,
        beta: float | None = None,
    ) -> ReplayBatch:
        """Draw ``batch_size`` chunks (see the module docstring for the rules). The batch is
        grouped by stage, current stage first. Random numbers come from ``generator`` (one
        ``torch.rand`` call), so equal generators and equal buffers give equal batches."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise ValueError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0 or self._sampleable_rows().size == 0:
            raise ValueError("cannot sample from an empty replay buffer (or all priorities 0)")
        if beta is not None and not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        weights = self.stage_weights(current_stage)
        stage_list = list(weights)
        rows = np.array([self._stage_row[s] for s in stage_list], dtype=np.int64)
        w = np.array([weights[s] for s in stage_list])
        sizes = self._stage_count[rows]
        caps = sizes if sizes.sum() >= batch_size else None
        if caps is None and w.sum() <= 0:
            w = sizes.astype(np.float64)
        counts = allocate_counts(batch_size, w, caps)
        # stratified within each stage: draw j of n_s lies in [j, j+1) * total_s / n_s
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy()
        sample_rows = np.repeat(rows, counts)
        offsets = np.concatenate([np.arange(c) for c in counts]).astype(np.float64)
        n_of = np.repeat(counts, counts).astype(np.float64)
        totals = self._tree.total(sample_rows)
        targets = np.minimum((offsets + u) / n_of, 1.0) * totals
        slots = self._tree.find_prefix(sample_rows, targets)

        b = self.beta_at() if beta is None else float(beta)
        self._samples += 1
        # w_i = (N_s P_s(i))^-β / max over stored items of the same
        leaf = self._tree.get(sample_rows, slots)
        n_s = self._stage_count[sample_rows].astype(np.float64)
        iw = (n_s * leaf / totals) ** (-b)
        all_rows = self._sampleable_rows()
        max_w = np.max(
            (self._stage_count[all_rows] * self._tree.min(all_rows) / self._tree.total(all_rows))
            ** (-b)
        )
        iw = iw / max_w

        idx = (self._item_start[slots] % self.capacity)[None, :] + np.arange(self.L)[:, None]
        idx %= self.capacity  # (L, B)
        data = {
            name: torch.from_numpy(np.take(arr, idx, axis=0))
            for name, arr in self._ring.arrays.items()
        }
        state = None
        if self._state_spec is not None:
            leaves = [
                torch.from_numpy(np.take(self._items.arrays[f"state/{i}"], slots, axis=0))
                for i in range(len(self._state_leaf_specs))
            ]
            state = pytree.tree_unflatten(leaves, self._state_spec)
        return ReplayBatch(
            data=data,
            initial_state=state,
            weights=torch.from_numpy(iw.astype(np.float32)),
            keys=torch.from_numpy(self._item_key[slots].copy()),
            stages=torch.from_numpy(np.asarray(self._stage_ids, dtype=np.int64)[sample_rows]),
            task_ids=torch.from_numpy(self._item_task[slots].copy()),
            burn_in=self.config.burn_in,
            beta=b,
        )

    def update_priorities(self, keys: Tensor | np.ndarray, priorities: Tensor | np.ndarray) -> int:
        """Set the priorities of the items ``keys`` (from a :class:`ReplayBatch`), e.g. to a
        chunk's TD-error statistic. Items evicted since they were sampled are skipped; returns
        the number updated. The last value wins for a key given twice."""
        k = _to_numpy("keys", keys, sequence_ok=True).reshape(-1)
        p = _to_numpy("priorities", priorities, sequence_ok=True).astype(np.float64).reshape(-1)
        if k.dtype == np.bool_ or not np.issubdtype(k.dtype, np.integer):
            raise ValueError(f"keys must be integers, got dtype {k.dtype}")
        if k.shape != p.shape:
            raise ValueError(f"keys and priorities must match, got {k.shape} and {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError("priorities must be finite and >= 0")
        slots = k % self.item_capacity
        live = (k >= 0) & (self._item_key[slots] == k)
        if not live.any():
            return 0
        slots, p = slots[live], p[live]
        self._tree.update(self._item_row[slots], slots, self._leaf_value(p))
        self._max_priority = max(self._max_priority, float(p.max()))
        return int(live.sum())

    def priorities(self, stage: int) -> dict[int, float]:
        """Item key -> stored leaf value ``(priority + eps)^α`` for the items of ``stage``."""
        if int(stage) not in self._stage_row:
            raise ValueError(f"unknown stage {stage}; known stages: {self._stage_ids}")
        row = self._stage_row[int(stage)]
        alive = np.arange(self._tail, self._items_added) % self.item_capacity
        alive = alive[self._item_row[alive] == row]
        vals = self._tree.get(row, alive)
        return {int(k): float(v) for k, v in zip(self._item_key[alive], vals)}

    # -- persistence ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Write memmapped arrays to disk (a no-op in memory)."""
        self._ring.flush()
        self._items.flush()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: ``{"schema_version", "meta" (JSON-able),
        "fields", "item_states", "items", "priorities"}`` of plain tensors. The tensors are
        copies (a memmap buffer's snapshot holds its data in memory)."""
        n = self.num_transitions

        def copy(arr: np.ndarray) -> Tensor:
            return torch.from_numpy(np.array(arr, copy=True))

        meta = {
            "config": _config_to_json(self.config),
            "fields": {
                name: {"shape": list(shape), "dtype": np.dtype(dtype).str}
                for name, (shape, dtype) in self._specs.items()
            },
            "state_spec": None
            if self._state_spec is None
            else pytree.treespec_dumps(self._state_spec),
            "state_leaves": [
                {"shape": list(shape), "dtype": np.dtype(dtype).str}
                for shape, dtype in self._state_leaf_specs
            ],
            "stage_ids": list(self._stage_ids),
            "stage_last_add": list(self._stage_last_add),
            "current_stage": self._current,
            "transitions_added": self._transitions_added,
            "items_added": self._items_added,
            "tail": self._tail,
            "adds": self._adds,
            "samples": self._samples,
            "max_priority": self._max_priority,
        }
        json.dumps(meta)  # fails here, not at load time, if anything is not JSON-able
        return {
            "schema_version": SCHEMA_VERSION,
            "meta": meta,
            "fields": {name: copy(arr[:n]) for name, arr in self._ring.arrays.items()},
            "item_states": {name: copy(arr) for name, arr in self._items.arrays.items()},
            "items": {
                "key": copy(self._item_key),
                "start": copy(self._item_start),
                "row": copy(self._item_row),
                "task": copy(self._item_task),
                "stage_count": copy(self._stage_count),
            },
            "priorities": copy(self._tree.all_leaves()),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], storage: str | None = None, directory: str | None = None
    ) -> ReplayBuffer:
        """A buffer rebuilt from :meth:`state_dict`, optionally with other storage (e.g. moved to
        a memmap ``directory``)."""
        meta = _check_schema(state)
        cfg = _config_from_json(meta["config"])
        if storage is not None:
            cfg = dataclasses.replace(cfg, storage=storage, directory=directory)
        buf = cls(cfg)
        buf.load_state_dict(state)
        return buf

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`state_dict` into this (empty or not) buffer. Its
        config must equal the snapshot's, storage and directory aside."""
        meta = _check_schema(state)
        saved = _config_from_json(meta["config"])
        mine = dataclasses.replace(self.config, storage=saved.storage, directory=saved.directory)
        if mine != saved:
            diff = {
                f.name: (getattr(saved, f.name), getattr(mine, f.name))
                for f in dataclasses.fields(saved)
                if getattr(saved, f.name) != getattr(mine, f.name)
            }
            raise ValueError(f"snapshot config differs from this buffer's (saved, mine): {diff}")
        fresh = ReplayBuffer(self.config)  # reset everything, then fill in
        self.__dict__.update(fresh.__dict__)
        try:
            for name, spec in meta["fields"].items():
                dtype = np.dtype(spec["dtype"])
                self._specs[name] = (tuple(spec["shape"]), dtype)
                arr = self._ring.allocate(name, tuple(spec["shape"]), dtype)
                data = state["fields"][name].numpy()
                arr[: len(data)] = data
            if meta["state_spec"] is not None:
                self._state_spec = pytree.treespec_loads(meta["state_spec"])
            for i, spec in enumerate(meta["state_leaves"]):
                dtype = np.dtype(spec["dtype"])
                self._state_leaf_specs.append((tuple(spec["shape"]), dtype))
                arr = self._items.allocate(f"state/{i}", tuple(spec["shape"]), dtype)
                arr[:] = state["item_states"][f"state/{i}"].numpy()
            items = state["items"]
            self._item_key[:] = items["key"].numpy()
            self._item_start[:] = items["start"].numpy()
            self._item_row[:] = items["row"].numpy()
            self._item_task[:] = items["task"].numpy()
            self._stage_ids = [int(s) for s in meta["stage_ids"]]
            self._stage_row = {s: r for r, s in enumerate(self._stage_ids)}
            self._stage_last_add = [int(v) for v in meta["stage_last_add"]]
            self._stage_count = items["stage_count"].numpy().astype(np.int64).copy()
            self._tree.add_trees(len(self._stage_ids))
            self._tree.load_leaves(state["priorities"].numpy())
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed replay snapshot: {e}") from e
        self._current = None if meta["current_stage"] is None else int(meta["current_stage"])
        for name in ("transitions_added", "items_added", "tail", "adds", "samples"):
            setattr(self, f"_{name}", int(meta[name]))
        self._max_priority = float(meta["max_priority"])


def _config_to_json(cfg: ReplayConfig) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    out["fields"] = None if cfg.fields is None else list(cfg.fields)
    return out


def _config_from_json(data: Mapping[str, Any]) -> ReplayConfig:
    data = dict(data)
    if data.get("fields") is not None:
        data["fields"] = tuple(data["fields"])
    known = {f.name for f in dataclasses.fields(ReplayConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"snapshot config has unknown keys {unknown}")
    return ReplayConfig(**data)


def _check_schema(state: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(state, Mapping) or "schema_version" not in state or "meta" not in state:
        raise ValueError("not a replay snapshot: expected a dict with schema_version and meta")
    if state["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"replay snapshot schema_version {state['schema_version']} is not supported "
            f"(this code reads {SCHEMA_VERSION})"
        )
    return state["meta"]
