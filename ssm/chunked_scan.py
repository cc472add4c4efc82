"""A chunked scan for diagonal linear recurrences with resets and an initial state.

    h_t = keep_t · a_t ⊙ h_{t-1} + b_t,      h_{-1} = h0,      keep_t = 0 where resets[:, t]

(a reset at ``t`` drops ``h_{t-1}``; it is folded into ``a`` as an exact zero, so nothing is
divided and no ``log(0)`` is taken). Time is cut into ``n = ceil(L / Q)`` chunks of ``Q`` steps,
chunk ``c`` covering steps ``cQ .. cQ+Q-1``:

1. *inside every chunk at once*, from a zero state: the local states
   ``ℓ_j = a_j ⊙ ℓ_{j-1} + b_j`` and the cumulative decays ``P_j = a_j ⊙ P_{j-1}``
   (``ℓ_0 = b_0``, ``P_0 = a_0``): ``Q`` vectorised steps over all ``n`` chunks;
2. *across chunks*: the state entering chunk ``c`` is ``H_c = P^{c-1}_{Q-1} ⊙ H_{c-1} +
   ℓ^{c-1}_{Q-1}`` with ``H_0 = h0``: ``n`` steps on one ``(B, *S)`` state each;
3. every state at once: ``h_{cQ+j} = ℓ^c_j + P^c_j ⊙ H_c``.

So a sequence of length ``L`` costs ``Q + n`` short Python steps (about ``2√L`` with the default
``Q = ⌈√L⌉``) in place of ``L``. The end is padded with ``a = 1, b = 0``, which leaves the state
unchanged, so the last state is ``H_n``. Exact (not log-space): zero and tiny decays are safe, and
it is plain tensor arithmetic, differentiable to any order and usable under ``torch.func``
(``grad``, ``jvp``, ``vmap``). It materialises every state ``(B, L, *S)``, so it is meant for
accelerators, where the per-step loop's launch count is what costs
(:func:`ssm.selective_scan.selective_scan_chunked` uses it on CUDA for calls that carry an
initial state or resets, which mamba-ssm's kernel does not take).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["chunked_linear_scan", "default_chunk"]


def default_chunk(length: int) -> int:
    """``⌈√L⌉``: it minimises the ``Q + L/Q`` Python steps of :func:`chunked_linear_scan`."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def chunked_linear_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    resets: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """All states ``(B, L, *S)`` and the last one ``(B, *S)`` of the recurrence above.

    ``b`` is ``(B, L, *S)`` with time on dim 1; ``a`` has ``b``'s rank and broadcasts against it
    (e.g. ``(B, L, D, 1)`` for a decay shared across the last axis); ``h0`` is ``(B, *S)`` or
    None (zeros); ``resets`` is ``(B, L)`` bool or None; ``chunk`` is ``Q`` (default
    :func:`default_chunk`).
    """
    if b.dim() < 2 or a.dim() != b.dim():
        raise ValueError(
            f"chunked_linear_scan: a and b must both be (B, L, ...) of one rank, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    batch, length, *rest = b.shape
    if torch.broadcast_shapes(a.shape, b.shape) != b.shape:
        raise ValueError(
            f"chunked_linear_scan: a {tuple(a.shape)} must broadcast to b {tuple(b.shape)}"
        )
    if h0 is not None and tuple(h0.shape) != (batch, *rest):
        raise ValueError(
            f"chunked_linear_scan: h0 must be {(batch, *rest)}, got {tuple(h0.shape)}"
        )
    if resets is not None and (resets.dtype != torch.bool or resets.shape != (batch, length)):
        raise ValueError(
            f"chunked_linear_scan: resets must be bool {(batch, length)}, got "
            f"{resets.dtype} {tuple(resets.shape)}"
        )
    q = default_chunk(length) if chunk is None else int(chunk)
    if q < 1:
        raise ValueError(f"chunked_linear_scan: chunk must be a positive int, got {chunk!r}")
    q = min(q, length)
    n = -(-length // q)
    pad = n * q - length
    extra = (1,) * len(rest)
    if resets is not None:
        keep = (~resets).to(b.real.dtype if b.is_complex() else b.dtype)
        a = a * keep.view(batch, length, *extra)
    a = a.expand(batch, length, *a.shape[2:])  # the batch and time axes, others may broadcast
    if pad:  # a = 1, b = 0 after the end: the state passes unchanged
        tail = (0, 0) * len(rest) + (0, pad)
        a, b = F.pad(a, tail, value=1.0), F.pad(b, tail)
    a_c = a.reshape(batch, n, q, *a.shape[2:]).unbind(2)  # Q x (B n *S')
    b_c = b.reshape(batch, n, q, *rest).unbind(2)  # Q x (B n *S)

    # 1. local states and cumulative decays, all chunks at once
    local, decay = [b_c[0]], [a_c[0]]
    for j in range(1, q):
        local.append(a_c[j] * local[-1] + b_c[j])
        decay.append(a_c[j] * decay[-1])
    # 2. the state entering each chunk
    h = b.new_zeros(batch, *rest) if h0 is None else h0.to(b.dtype)
    entering = []
    for c in range(n):
        entering.append(h)
        h = decay[-1][:, c] * h + local[-1][:, c]
    # 3. every state
    enter = torch.stack(entering, dim=1)[:, :, None]  # (B n 1 *S)
    states = torch.stack(local, dim=2) + torch.stack(decay, dim=2) * enter  # (B n Q *S)
    return states.reshape(batch, n * q, *rest)[:, :length], h
