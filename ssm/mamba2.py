"""Mamba-2: the SSD block of Dao & Gu (2024), "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality".

    z, xBC, dt = split(in_proj(u))                     (B L 2E+2N+H) -> E, E+2N, H
    x, B, C    = split(silu(causal_depthwise_conv1d(xBC)))   width d_conv, one filter per channel
    Δ          = softplus(dt + dt_bias)                 (B L H): one step size per head
    h_t        = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t       per head: (P, N), A = -exp(A_log) scalar
    y_t        = h_t C_t + D x_t                        (B L H P), B and C shared by all heads
    out        = out_proj(rmsnorm(y ⊙ silu(z)) · w)     the gated RMSNorm of mamba-ssm's Mamba2

with ``E = expand · d_model`` channels in ``H = E / headdim`` heads of ``P = headdim`` and one
group (``ngroups = 1``). ``A`` is a scalar times the identity per head, so the decay from step
``s`` to ``t`` is the scalar ``exp(S_t - S_s)``, ``S`` the cumulative sum of ``Δ A``. Sequence
mode uses the chunked SSD form (:func:`ssd_chunked`): within chunks of ``chunk_size`` steps the
outputs are matrix products (``(C Bᵀ ∘ decay) (Δ x)``; BLAS on CPU), and the state is carried
across chunks by a short loop. Step mode is the recurrence. A reset zeroes the state before its
step: inside the chunked form, decays are masked to the current episode (no ``log 0``).

The recurrent state is ``(conv_state (B, E+2N, d_conv), ssm_state (B, H, P, N))``; a reset zeroes
both, so nothing before it leaks through the conv (as in :mod:`ssm.mamba`).

On CUDA (float32/16, outside ``torch.func`` transforms) the scan may go to mamba-ssm's Triton
``mamba_chunk_scan_combined`` (initial state as ``initial_states``, resets as ``seq_idx``), chosen
in :func:`ssm.backend.use_cuda_ssd`; that path is written but untested (no GPU here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend as _backend
from .base import SequenceLayer, State
from .mamba import causal_depthwise_conv
from .step_stack import stack_steps

__all__ = ["Mamba2", "ssd_chunked", "ssd_ref"]


def ssd_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The SSD recurrence one step at a time (the oracle). ``x (b, L, H, P)``, ``dt (b, L, H)``,
    ``A (H,)``, ``B, C (b, L, N)``, ``h0 (b, H, P, N)``; returns ``y (b, L, H, P)`` (without
    ``D x``) and the last state."""
    batch, length, nheads, p = x.shape
    h = x.new_zeros(batch, nheads, p, B.shape[-1]) if h0 is None else h0
    ys = []
    for t in range(length):
        if resets is not None:
            h = h * (~resets[:, t]).to(x.dtype)[:, None, None, None]
        dtt = dt[:, t]  # (b H)
        inject = (dtt[..., None] * x[:, t])[..., None] * B[:, t, None, None, :]  # (b H P N)
        h = torch.exp(dtt * A)[..., None, None] * h + inject
        ys.append((h * C[:, t, None, None, :]).sum(-1))  # (b H P)
    return stack_steps(ys, dim=1), h


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    resets: Tensor | None = None,
    chunk: int = 64,
) -> tuple[Tensor, Tensor]:
    """:func:`ssd_ref` in the chunked SSD form. With chunks of ``Q`` steps, ``S`` the cumulative
    log-decay ``Σ Δ A`` inside a chunk and ``seg`` the episode index (cumulative resets):

        y_t   = Σ_{s ≤ t, seg_s = seg_t} exp(S_t - S_s) (C_t · B_s) Δ_s x_s      (within chunk)
              + [seg_t = seg_in] exp(S_t) C_t · H_in                              (carried in)
        H_out = [seg_end = seg_in] exp(S_end) H_in
              + Σ_{seg_s = seg_end} exp(S_end - S_s) Δ_s x_s ⊗ B_s

    ``seg_in`` is the episode of the step before the chunk (0 for the first: the initial state's).
    Every exponent is ``≤ 0``, and masked entries are set to 0 *before* ``exp``, so nothing
    overflows and every derivative is finite. The end is padded with ``Δ = 0, x = 0`` (state
    unchanged), so the last ``H_out`` is the state at step ``L - 1``.
    """
    batch, length, nheads, p = x.shape
    n_state = B.shape[-1]
    q = max(1, min(int(chunk), length))
    n = -(-length // q)
    pad = n * q - length
    if resets is None:
        seg = torch.zeros(batch, length, dtype=torch.int64, device=x.device)
    else:
        seg = torch.cumsum(resets.to(torch.int64), dim=1)  # (b L) episode of each step
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (dt, B, C))
        seg = torch.cat([seg, seg[:, -1:].expand(batch, pad)], dim=1)
    x = x.reshape(batch, n, q, nheads, p)
    dt = dt.reshape(batch, n, q, nheads)
    B, C = B.reshape(batch, n, q, n_state), C.reshape(batch, n, q, n_state)
    seg = seg.reshape(batch, n, q)

    S = torch.cumsum(dt * A, dim=2).transpose(2, 3)  # (b n H Q) cumulative log-decay, <= 0
    xdt = (x * dt[..., None]).permute(0, 1, 3, 2, 4)  # (b n H Q P)
    # within chunks: y = (decay ∘ C Bᵀ) (Δ x), the decay masked to t >= s in one episode
    idx = torch.arange(q, device=x.device)
    same = (seg[..., :, None] == seg[..., None, :]) & (idx[:, None] >= idx[None, :])  # (b n t s)
    same = same[:, :, None]  # (b n 1 t s)
    diff = S[..., :, None] - S[..., None, :]  # (b n H t s)
    decay = torch.exp(torch.where(same, diff, torch.zeros_like(diff))) * same.to(x.dtype)
    cb = torch.matmul(C, B.transpose(-1, -2))[:, :, None]  # (b n 1 t s)
    y = torch.matmul(decay * cb, xdt)  # (b n H Q P)

    # each chunk's own contribution to its end state: the steps in its last episode
    s_end = S[..., -1:]  # (b n H 1)
    in_last = (seg == seg[..., -1:]).to(x.dtype)[:, :, None]  # (b n 1 Q)
    w_end = torch.exp(s_end - S) * in_last  # (b n H Q)
    states = torch.matmul((xdt * w_end[..., None]).transpose(-1, -2), B[:, :, None])  # (b n H P N)
    # the state carried across chunks: it passes a chunk only if no reset lies inside
    seg_in = torch.cat([seg.new_zeros(batch, 1), seg[:, :-1, -1]], dim=1)  # (b n)
    passes = (seg == seg_in[..., None]).to(x.dtype)  # (b n Q)
    chunk_decay = torch.exp(s_end[..., 0]) * passes[..., -1:]  # (b n H)
    h = x.new_zeros(batch, nheads, p, n_state) if h0 is None else h0
    entering = []
    for c in range(n):
        entering.append(h)
        h = chunk_decay[:, c, :, None, None] * h + states[:, c]
    h_in = torch.stack(entering, dim=1)  # (b n H P N)
    w_in = torch.exp(S) * passes[:, :, None]  # (b n H Q)
    y_in = torch.matmul(C[:, :, None], h_in.transpose(-1, -2)) * w_in[..., None]  # (b n H Q P)
    y = (y + y_in).permute(0, 1, 3, 2, 4).reshape(batch, n * q, nheads, p)[:, :length]
    return y, h


def _ssd_cuda(x, dt, A, B, C, h0, resets, chunk: int) -> tuple[Tensor, Tensor]:
    """mamba-ssm's ``mamba_chunk_scan_combined`` behind :class:`FirstOrderKernel` (second-order
    derivatives and last-state gradients recompute through :func:`ssd_chunked`). Resets become
    ``seq_idx`` (the episode index, 0 for the initial state's), which the kernel uses to stop the
    state at episode boundaries, within and across chunks. Untested: no GPU here."""
    from .selective_scan import FirstOrderKernel

    fn = _backend.mamba_ssm_chunk_scan_fn()
    seq_idx = None
    if resets is not None:  # (b L) int32, the episode index; the initial state's is 0
        seq_idx = torch.cumsum(resets.to(torch.int64), dim=1).to(torch.int32).contiguous()

    def fast(x_, dt_, A_, B_, C_, h0_):
        y, last = fn(
            x_.contiguous(),
            dt_.contiguous(),
            A_.float().contiguous(),
            B_[:, :, None].contiguous(),  # (b L 1 N): one group
            C_[:, :, None].contiguous(),
            chunk,
            initial_states=None if h0_ is None else h0_.contiguous(),
            seq_idx=seq_idx,
            return_final_states=True,
        )
        return y, last.to(x_.dtype)

    def ref(x_, dt_, A_, B_, C_, h0_):
        return ssd_chunked(x_, dt_, A_, B_, C_, h0_, resets, chunk)

    return FirstOrderKernel.apply(fast, ref, x, dt, A, B, C, h0)


class GatedRMSNorm(nn.Module):
    """``rmsnorm(y ⊙ silu(z)) · weight`` over the last axis (mamba-ssm's ``RMSNormGated`` with
    ``norm_before_gate=False`` and one group), in elementary ops (exact at any order)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _auto_headdim(d_inner: int) -> int:
    """The largest divisor of ``d_inner`` that is at most 64 (mamba-ssm's default head size)."""
    return max(d for d in range(1, min(64, d_inner) + 1) if d_inner % d == 0)


class Mamba2(SequenceLayer):
    """The Mamba-2 block (without the residual and norm, which :class:`SequencePolicy` adds)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int | str = "auto",
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ):
        super().__init__()
        for name, v in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Mamba2 {name} must be a positive int, got {v!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"Mamba2 chunk_size must be a positive int, got {chunk_size!r}")
        e = expand * d_model
        if headdim == "auto":
            headdim = _auto_headdim(e)
        if isinstance(headdim, bool) or not isinstance(headdim, int) or headdim < 1 or e % headdim:
            raise ValueError(
                f"Mamba2 headdim must be 'auto' or a positive int dividing expand * d_model = {e}, "
                f"got {headdim!r}"
            )
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, e
        self.headdim, self.nheads, self.chunk_size = headdim, e // headdim, chunk_size
        self.backend = _backend.check_backend(backend)
        n, h = d_state, self.nheads
        self.conv_dim = e + 2 * n

        self.in_proj = nn.Linear(d_model, 2 * e + 2 * n + h, bias=bias)  # z, x, B, C, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim)
        if not conv_bias:
            self.conv1d.bias = nn.Parameter(torch.zeros(self.conv_dim), requires_grad=False)
        # Δ initialised log-uniform in [dt_min, dt_max] through dt_bias (inverse softplus).
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # A = -exp(A_log), one scalar per head, uniform in [1, 16] as in mamba-ssm.
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(e, eps=norm_eps)
        self.out_proj = nn.Linear(e, d_model, bias=bias)

    def state_shapes(self, batch_size: int):
        return [
            ((batch_size, self.conv_dim, self.d_conv), False),
            ((batch_size, self.nheads, self.headdim, self.d_state), False),
        ]

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = self.d_inner
        return torch.split(zxbcdt, [e, self.conv_dim, self.nheads], dim=-1)  # z, xBC, dt

    def _forward(self, u: Tensor, state: State, resets: Tensor | None) -> tuple[Tensor, State]:
        conv_state, ssm_state = state or self.zeros_like_state(u)
        batch, length, _ = u.shape
        e, n, h, p = self.d_inner, self.d_state, self.nheads, self.headdim
        z, xbc, dt = self._split(self.in_proj(u))  # (B L E), (B L E+2N), (B L H)
        xbc_in = xbc.transpose(1, 2)  # (B E+2N L)
        xbc = F.silu(
            causal_depthwise_conv(xbc_in, self.conv1d.weight, self.conv1d.bias, conv_state, resets)
        ).transpose(1, 2)  # (B L E+2N)
        x, B, C = torch.split(xbc, [e, n, n], dim=-1)
        x = x.reshape(batch, length, h, p)  # (B L H P)
        dt = F.softplus(dt + self.dt_bias)  # (B L H)
        A = -torch.exp(self.A_log)  # (H)
        h0 = None if state is None else ssm_state
        if _backend.use_cuda_ssd(x, dt, B, C, backend=self.backend):
            y, h_last = _ssd_cuda(x, dt, A, B, C, h0, resets, self.chunk_size)
        else:
            y, h_last = ssd_chunked(x, dt, A, B, C, h0, resets, self.chunk_size)
        y = (y + self.D[:, None] * x).reshape(batch, length, e)  # (B L E)
        out = self.out_proj(self.norm(y, z))
        # The new conv state holds the last d_conv inputs, or fewer (zero-padded) after a reset.
        k = self.d_conv
        hist = torch.cat([conv_state, xbc_in[..., -k:]], dim=-1)[..., -k:]  # (B E+2N K)
        if resets is not None:
            seg = torch.cumsum(resets.to(torch.int64), dim=1)
            seg_p = torch.cat([seg.new_zeros(seg.shape[0], k), seg], dim=1)[:, -k:]
            hist = hist * (seg_p == seg[:, -1:]).to(u.dtype)[:, None, :]
        return out, (hist, h_last)

    def _step(self, u: Tensor, state: State) -> tuple[Tensor, State]:
        conv_state, ssm_state = state
        batch = u.shape[0]
        e, n, h, p = self.d_inner, self.d_state, self.nheads, self.headdim
        z, xbc, dt = self._split(self.in_proj(u))  # (B E), (B E+2N), (B H)
        conv_state = torch.cat([conv_state[..., 1:], xbc[..., None]], dim=-1)  # (B E+2N K)
        w = self.conv1d.weight.squeeze(1)  # (E+2N 1 K) -> (E+2N K)
        xbc = F.silu((conv_state * w).sum(-1) + self.conv1d.bias)  # (B E+2N)
        x, B, C = torch.split(xbc, [e, n, n], dim=-1)
        x = x.reshape(batch, h, p)  # (B H P)
        dt = F.softplus(dt + self.dt_bias)  # (B H)
        decay = torch.exp(dt * -torch.exp(self.A_log))  # (B H)
        ssm_state = (
            decay[..., None, None] * ssm_state + (dt[..., None] * x)[..., None] * B[:, None, None]
        )  # (B H P N)
        y = (ssm_state * C[:, None, None]).sum(-1) + self.D[:, None] * x  # (B H P)
        out = self.out_proj(self.norm(y.reshape(batch, e), z))
        return out, (conv_state, ssm_state)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"nheads={self.nheads}, headdim={self.headdim}, d_conv={self.d_conv}, "
            f"chunk_size={self.chunk_size}, backend={self.backend!r}"
        )
