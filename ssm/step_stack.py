"""``stack_steps``: ``torch.stack`` of per-step outputs whose backward stays O(L) when it is
differentiated again (a second-order meta-gradient through a loop over time): the gradient is
split in one op, not by one zero-padded select per step. Sequence layers that loop over time join
their steps with it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .backend import nested_forward_mode

__all__ = ["stack_steps"]


def _split_steps(x: Tensor, dim: int) -> list[Tensor]:
    """The slices of ``x`` along ``dim``, by ``split`` (one ``cat`` in the backward)."""
    return [s.squeeze(dim) for s in x.split(1, dim=dim)]


class _StackSteps(torch.autograd.Function):
    """``torch.stack(steps, dim)`` whose backward splits the gradient in one op.

    ``torch.stack``'s own backward takes one ``select`` per step, and the backward of a ``select``
    (reached when the scan is differentiated twice, as in MAML) allocates a zero-filled gradient
    of the whole sequence per step: O(L²) memory traffic. ``split`` differentiates into a single
    ``cat``. Composes with ``torch.func`` (``vmap`` rule generated; backward in plain torch ops, so
    differentiable to any order).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(dim: int, *steps: Tensor) -> Tensor:
        return torch.stack(steps, dim=dim)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.dim = inputs[0]
        # a step's shape, dtype and device for absent tangents (metadata only: a tensor view of
        # the output kept on ctx would tie output -> grad_fn -> ctx -> output in a cycle)
        step = output.select(ctx.dim, 0)
        ctx.step_meta = (step.shape, step.dtype, step.device)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *_split_steps(grad, ctx.dim))

    @staticmethod
    def jvp(ctx, _dim, *tangents: Tensor | None) -> Tensor:  # forward mode (HVPs)
        if any(t is None for t in tangents):
            shape, dtype, device = ctx.step_meta
            zero = torch.zeros(shape, dtype=dtype, device=device)
            tangents = tuple(zero if t is None else t for t in tangents)
        return torch.stack(tangents, dim=ctx.dim)


def stack_steps(steps: Sequence[Tensor], dim: int) -> Tensor:
    """``torch.stack(steps, dim)`` for the per-step outputs of a recurrence, with a backward that
    stays O(L) when differentiated again (see :class:`_StackSteps`). Under nested forward mode it
    is plain ``torch.stack`` (see :func:`ssm.backend.nested_forward_mode`)."""
    if nested_forward_mode():
        return torch.stack(list(steps), dim=dim)
    return _StackSteps.apply(dim, *steps)
