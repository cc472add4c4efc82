"""Parallel scans for diagonal linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t``.

The associative operator ``(a1, b1) ∘ (a2, b2) = (a2 a1, a2 b1 + b2)`` lets the whole sequence be
computed in ``ceil(log2 L)`` vectorised steps (Hillis & Steele doubling), with no Python loop over
time. Every step is plain tensor arithmetic, so the scan is differentiable to any order and works
under ``torch.func.vmap``. Zeros in ``a`` (episode resets) are exact: nothing is divided.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["diagonal_linear_scan"]


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
