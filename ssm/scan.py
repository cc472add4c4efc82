"""Parallel scans for diagonal linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t``.

The associative operator ``(a1, b1) ∘ (a2, b2) = (a2 a1, a2 b1 + b2)`` lets the whole sequence be
computed in ``ceil(log2 L)`` vectorised steps (Hillis & Steele doubling), with no Python loop over
time. Every step is plain tensor arithmetic, so the scan is differentiable to any order and works
under ``torch.func.vmap``. Zeros in ``a`` (episode resets) are exact: nothing is divided.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .backend import nested_forward_mode

__all__ = ["diagonal_linear_scan", "stack_steps"]


def diagonal_linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, dim: int = 1) -> Tensor:
    """All states ``h_t`` of ``h_t = a_t * h_{t-1} + b_t`` along ``dim``, with ``h_{-1} = h0``.

    ``a`` is time-varying when it has ``b``'s rank and length along ``dim``; otherwise it must
    broadcast against one time step of ``b`` (an LTI system) and is squared at each doubling in
    place of being scanned. ``h0`` has ``b``'s shape without ``dim``.
    """
    dim = dim % b.dim()
    length = b.shape[dim]
    time_varying = a.dim() == b.dim() and a.shape[dim] == length and length > 1
    if h0 is not None:
        a0 = a.narrow(dim, 0, 1) if time_varying else a
        first = b.narrow(dim, 0, 1) + a0 * h0.unsqueeze(dim)
        b = torch.cat([first, b.narrow(dim, 1, length - 1)], dim=dim)
    k = 1
    while k < length:
        prev, cur = b.narrow(dim, 0, length - k), b.narrow(dim, k, length - k)
        if time_varying:
            a_cur = a.narrow(dim, k, length - k)
            b = torch.cat([b.narrow(dim, 0, k), a_cur * prev + cur], dim=dim)
            a = torch.cat([a.narrow(dim, 0, k), a_cur * a.narrow(dim, 0, length - k)], dim=dim)
        else:
            b = torch.cat([b.narrow(dim, 0, k), a * prev + cur], dim=dim)
            a = a * a
        k *= 2
    return b


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
