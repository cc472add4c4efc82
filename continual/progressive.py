"""Progressive columns as a trainer plugin: one :class:`ssm.progressive.ProgressivePolicy` column
per stage (Rusu et al., 2016).

Stage ``k`` trains column ``k`` (and its lateral adapters) and nothing else; at the stage's end
the column is frozen and column ``k + 1`` becomes the active one::

    train k       the gradients of every other column are zeroed (mask_gradients); frozen
                  columns have requires_grad=False, so autograd and the optimiser skip them
                  (no Adam moment or weight decay can move them), and after every optimiser
                  step their recorded values are written back (a guard for optimisers that
                  step parameters without gradients)
    end_stage(k)  column k is frozen and recorded; column k + 1 becomes active
    evaluate j    stage j is scored with column min(j, active) (evaluation_params sets the
                  policy's ``active`` buffer), so a finished stage's outputs stay bit-identical
                  however many stages follow

The columns are allocated up front (``K`` = the curriculum's stages), so the stage boundaries must
be known: :func:`progressive_policy` and the config refuse hidden boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metarl.plugins import Plugin, StageEnd
from ssm.policy import SequencePolicy
from ssm.progressive import ProgressivePolicy

__all__ = ["PROGRESSIVE_SCHEMA_VERSION", "ProgressiveColumns", "progressive_policy"]

PROGRESSIVE_SCHEMA_VERSION = 1


def progressive_policy(
    policy: SequencePolicy, stages: int, lateral_width: int | None = None
) -> ProgressivePolicy:
    """A progressive network of one column per stage, column 0 starting as ``policy``."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"progressive columns need a number of stages >= 1, got {stages!r}")
    return ProgressivePolicy.from_policy(policy, stages, lateral_width)


class ProgressiveColumns(Plugin):
    """Trains the active column of ``policy`` only, freezes it at each stage end and moves to the
    next (see the module docstring)."""

    kind = "progressive"
    name = "progressive"

    def __init__(self, policy: ProgressivePolicy):
        if not isinstance(policy, ProgressivePolicy):
            raise ValueError(
                "regularizer.kind=progressive needs a ssm.ProgressivePolicy, got "
                f"{type(policy).__name__}"
            )
        self.policy = policy
        self.frozen = 0  # columns 0..frozen-1 are finished
        self.reference: dict[str, Tensor] = {}  # the values of the frozen parameters
        self.policy.set_active(0)

    @property
    def column(self) -> int:
        """The column being trained (the last one once every column is frozen)."""
        return min(self.frozen, self.policy.num_columns - 1)

    # -- training -------------------------------------------------------------------------------
    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        column = self.column if self.frozen < self.policy.num_columns else -1
        return {
            n: g if self.policy.column_of(n) == column else torch.zeros_like(g)
            for n, g in grads.items()
        }

    @torch.no_grad()
    def after_step(self, params: Mapping[str, Tensor]) -> None:
        if not self.reference:
            return
        for n, p in self.policy.named_parameters():
            ref = self.reference.get(n)
            if ref is not None:
                p.copy_(ref)

    def end_stage(self, end: StageEnd) -> None:
        k = self.frozen
        if k >= self.policy.num_columns:
            raise ValueError(
                f"progressive: stage {end.stage} ended but all {self.policy.num_columns} columns "
                "are used; a progressive network needs one column per stage"
            )
        self._freeze(k)
        self.frozen = k + 1
        self.policy.set_active(self.column)

    def _freeze(self, column: int) -> None:
        """Record the column's values; detach it from autograd unless it is the last one (a
        meta-learner's adapted evaluation after the last stage adapts its trainable parameters:
        the last column's, which mask_gradients and after_step still keep fixed)."""
        last = column == self.policy.num_columns - 1
        for n, p in self.policy.named_parameters():
            if self.policy.column_of(n) == column:
                p.requires_grad_(last)
                self.reference[n] = p.detach().clone()

    # -- evaluation -----------------------------------------------------------------------------
    def evaluation_group(self, stage: int) -> int:
        return min(stage, self.column)

    def evaluation_params(self, params: Mapping[str, Tensor], group: int) -> dict[str, Tensor]:
        """``params`` and the ``active`` buffer set to the group's column."""
        return {**params, "active": torch.tensor(group, dtype=self.policy.active.dtype)}

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PROGRESSIVE_SCHEMA_VERSION,
            "kind": self.kind,
            "columns": self.policy.num_columns,
            "frozen": self.frozen,
            "reference": {n: r.clone() for n, r in self.reference.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("kind") != self.kind:
            raise ValueError(f"expected a progressive plugin state, got {type(state).__name__}")
        if state.get("schema_version") != PROGRESSIVE_SCHEMA_VERSION:
            raise ValueError(
                f"progressive state schema_version {state.get('schema_version')} is not "
                f"supported (this code reads {PROGRESSIVE_SCHEMA_VERSION})"
            )
        if state["columns"] != self.policy.num_columns:
            raise ValueError(
                f"progressive state is for {state['columns']} columns, the policy has "
                f"{self.policy.num_columns}"
            )
        frozen = int(state["frozen"])
        for k in range(frozen):
            self._freeze(k)
        with torch.no_grad():
            for n, p in self.policy.named_parameters():
                if n in state["reference"]:
                    p.copy_(state["reference"][n])
        self.reference = {n: r.clone() for n, r in state["reference"].items()}
        self.frozen = frozen
        self.policy.set_active(self.column)
