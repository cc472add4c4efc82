"""Diagonal linear time-invariant SSM layers: S4D and S5.

Both discretise a diagonal continuous system ``x' = Λx + Bu, y = Cx + Du`` with zero-order hold,

    Λ̄ = exp(ΔΛ),     B̄ = (Λ̄ - 1) / Λ · B,     h_t = Λ̄ h_t-1 + B̄ u_t,     y_t = 2 Re(C h_t) + D u_t,

keeping one of each complex-conjugate pair of modes (hence the ``2 Re``). The layer output is
``Linear-GLU(GELU(y))``, as in the S4/S5 reference blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend as _backend
from .base import SequenceLayer, State
from .diagonal_scan import diagonal_linear_scan


def _log_uniform(shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return torch.rand(shape) * (math.log(hi) - math.log(lo)) + math.log(lo)


class _DiagonalLTI(SequenceLayer):
    """Shared parts: the D skip and the GELU -> Linear -> GLU output map."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def _output(self, y: Tensor, u: Tensor) -> Tensor:
        return F.glu(self.out_proj(F.gelu(y + self.D * u)), dim=-1)


class S4D(_DiagonalLTI):
    """Diagonal S4 (Gu, Gupta, Goel & Ré, 2022, "On the Parameterization and Initialization of
    Diagonal State Space Models"): one SISO system of ``d_state/2`` complex modes per channel.

    Sequence mode without resets is an FFT convolution with the kernel
    ``K_l = 2 Re(Σ_n C_n B̄_n Λ̄_n^l)``; with resets it is a chunked scan (see ``_forward_resets``).
    ``init="lin"``: Λ_n = -1/2 + iπn; ``init="inv"``: Λ_n = -1/2 + i N/π (N/(2n+1) - 1).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        chunk: int = 16,
    ):
        super().__init__(d_model)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S4D d_state must be an even int >= 2, got {d_state}")
        if init not in ("lin", "inv"):
            raise ValueError(f"S4D init must be 'lin' or 'inv', got {init!r}")
        self.d_state, self.init, self.chunk = d_state, init, chunk
        h, m = d_model, d_state // 2
        n = torch.arange(m, dtype=torch.float32)
        imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (2 * n + 1) - 1)
        self.log_dt = nn.Parameter(_log_uniform((h,), dt_min, dt_max))
        self.A_re_log = nn.Parameter(torch.full((h, m), math.log(0.5)))
        self.A_im = nn.Parameter(imag.repeat(h, 1))
        self.C_re = nn.Parameter(torch.randn(h, m) * 0.5**0.5)
        self.C_im = nn.Parameter(torch.randn(h, m) * 0.5**0.5)

    def state_shapes(self, batch_size: int):
        return [((batch_size, self.d_model, self.d_state // 2), True)]

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(ΔΛ, Λ̄, B̄, C)``, each ``(H, N/2)`` complex; B = 1 (S4D folds it into C)."""
        A = torch.complex(-torch.exp(self.A_re_log), self.A_im)
        dtA = torch.exp(self.log_dt)[:, None] * A
        A_bar = torch.exp(dtA)
        return dtA, A_bar, (A_bar - 1) / A, torch.complex(self.C_re, self.C_im)

    @staticmethod
    def _powers(dtA: Tensor, count: int) -> Tensor:
        """``Λ̄^l`` for ``l = 0 .. count-1`` as ``(H, count, N/2)``, by ``exp(l ΔΛ)``."""
        ell = torch.arange(count, device=dtA.device, dtype=dtA.real.dtype)
        return torch.exp(ell[:, None] * dtA[:, None, :])

    @staticmethod
    def _vandermonde(dtA: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """``Λ̄^l = Λ̄^(c·i) · Λ̄^j`` for ``l = c·i + j < count``, as two factors: ``coarse``
        ``(H, rows, N/2)`` and ``fine (H, c, N/2)``, c ≈ √count. Sums against ``Λ̄^l`` become two
        small matmuls, and no ``(H, L, N/2)`` tensor is built (forward or backward)."""
        c = max(1, math.isqrt(count))
        rows = -(-count // c)
        ar = torch.arange(max(c, rows), device=dtA.device, dtype=dtA.real.dtype)
        fine = torch.exp(ar[:c, None] * dtA[:, None, :])  # (H c N)
        coarse = torch.exp((c * ar[:rows, None]) * dtA[:, None, :])  # (H rows N)
        return coarse, fine

    @staticmethod
    def _power_sum(weights: Tensor, coarse: Tensor, fine: Tensor, count: int) -> Tensor:
        """``Σ_n w[..., h, n] Λ̄_hn^l`` for ``l < count``; ``weights (..., H, N)`` complex, returns
        ``(..., H, count)`` complex."""
        rows, c = coarse.shape[1], fine.shape[1]
        lead = weights.shape[:-2]
        w = weights.reshape(-1, *weights.shape[-2:]).transpose(0, 1)  # (H, P, N)
        left = (w[:, :, None, :] * coarse[:, None]).flatten(1, 2)  # (H, P·rows, N)
        out = torch.matmul(left, fine.transpose(1, 2))  # (H, P·rows, c)
        out = out.reshape(out.shape[0], -1, rows * c)[..., :count]  # (H, P, count)
        return out.transpose(0, 1).reshape(*lead, out.shape[0], count)

    def _final_state(self, x, dtA, A_bar, B_bar, h0, seg):
        """``h_{L-1} = Σ_{s in the last episode} Λ̄^{L-1-s} B̄ u_s (+ Λ̄^L h0 if no reset)``."""
        batch, length, h = x.shape
        u = x if seg is None else x * (seg == seg[:, -1:]).to(x.dtype)[..., None]
        coarse, fine = self._vandermonde(dtA, length)
        rows, c = coarse.shape[1], fine.shape[1]
        # u_rev[l] pairs with Λ̄^l; l = c·i + j. Real u against complex fine powers is one real
        # batched matmul over channels h (bmm wants batch-contiguous operands: one copy of u).
        u_rev = F.pad(u.flip(1), (0, 0, 0, rows * c - length))  # (B rows·c H)
        u_rev = u_rev.permute(2, 0, 1).reshape(h, batch * rows, c).contiguous()
        fr = torch.view_as_real(fine).flatten(-2)  # (H c 2N)
        part = torch.view_as_complex(torch.bmm(u_rev, fr).unflatten(-1, (-1, 2)))  # (H B·rows N)
        part = part.reshape(h, batch, rows, -1) * coarse[:, None]  # (H B rows N)
        h_last = part.sum(2).transpose(0, 1) * B_bar  # (B H N)
        if h0 is not None:
            carry = torch.exp(length * dtA) * h0
            if seg is not None:
                carry = carry * (seg[:, -1] == 0).to(x.dtype)[:, None, None]
            h_last = h_last + carry
        return h_last

    def _forward(self, x: Tensor, state: State | None, resets: Tensor | None):
        h0 = None if state is None else state[0]
        if resets is not None:
            return self._forward_resets(x, h0, resets)
        length = x.shape[1]
        dtA, A_bar, B_bar, C = self.discretize()
        coarse, fine = self._vandermonde(dtA, length)
        K = 2 * self._power_sum(C * B_bar, coarse, fine, length).real  # (H L)
        u = x.transpose(1, 2)  # (B H L)
        n_fft = 2 * length
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft)
        y = y[..., :length]  # (B H L)
        if h0 is not None:  # the initial state's echo: 2 Re(Σ_n C Λ̄^{t+1} h0)
            y = y + 2 * self._power_sum(C * A_bar * h0, coarse, fine, length).real
        h_last = self._final_state(x, dtA, A_bar, B_bar, h0, None)
        # (B H L) -> (B L H) once, contiguous: elementwise backward on transposed views is slow.
        return self._output(y.transpose(1, 2).contiguous(), x), (h_last,)

    def _forward_resets(self, x: Tensor, h0: Tensor | None, resets: Tensor):
        """Chunked scan. Time is cut into chunks of T steps. Inside a chunk the output is a
        Toeplitz product masked to the current episode; the state at each chunk end is passed to
        the next chunk by a scan over chunks, and reaches step t only if no reset lies in between.
        """
        batch, length, h = x.shape
        T = min(self.chunk, length)
        n_chunks = -(-length // T)
        pad = n_chunks * T - length
        dtA, A_bar, B_bar, C = self.discretize()
        V = self._powers(dtA, T + 1)  # (H T+1 N)
        K = 2 * torch.einsum("hn,hln->hl", C * B_bar, V[:, :T]).real  # (H T)
        seg = torch.cumsum(resets.to(torch.int64), dim=1)  # (B L): episode index of each step
        seg_c = F.pad(seg, (0, pad), value=-1).reshape(batch, n_chunks, T)  # padding: no episode
        u = F.pad(x, (0, 0, 0, pad)).reshape(batch, n_chunks, T, h)  # (B C T H)
        lag = torch.arange(T, device=x.device)
        causal = lag[:, None] >= lag[None, :]  # (t s)
        same = (seg_c[..., :, None] == seg_c[..., None, :]) & causal  # (B C t s)
        toeplitz = K[:, (lag[:, None] - lag[None, :]).clamp(min=0)]  # (H t s)
        y = torch.einsum("bcts,hts,bcsh->bcth", same.to(x.dtype), toeplitz, u)
        # The state entering chunk c reaches step t iff t is still in the episode of step cT-1.
        seg_before = torch.cat([seg_c.new_zeros(batch, 1), seg_c[:, :-1, -1]], dim=1)  # (B C)
        passes = (seg_c == seg_before[..., None]).to(x.dtype)  # (B C T)
        end_same = (seg_c == seg_c[..., -1:]).to(x.dtype)  # (B C T)
        u_end = (u * end_same[..., None]).to(V.dtype)
        local_end = torch.einsum("bcsh,hsn->bchn", u_end, V[:, :T].flip(1)) * B_bar
        decay = passes[..., -1, None, None] * V[:, T]  # (B C H N)
        if h0 is None:
            h0 = local_end.new_zeros(batch, h, self.d_state // 2)
        ends = diagonal_linear_scan(decay, local_end, h0, dim=1)  # (B C H N): state at chunk end
        entering = torch.cat([h0[:, None], ends[:, :-1]], dim=1)  # (B C H N)
        echo = 2 * torch.einsum("bchn,htn->bcth", entering, C[:, None] * V[:, 1 : T + 1]).real
        y = (y + echo * passes[..., None]).reshape(batch, n_chunks * T, h)[:, :length]
        h_last = self._final_state(x, dtA, A_bar, B_bar, h0, seg)
        return self._output(y, x), (h_last,)

    def _step(self, x: Tensor, state: State):
        (h,) = state
        if self.fused_step_ready(x):
            p, out_p = self._parameters, self._modules["out_proj"]._parameters
            out, h_new = _backend.cpu_ext().s4d_step(
                x.contiguous(),
                torch.view_as_real(h.contiguous()),
                *(p[k] for k in ("log_dt", "A_re_log", "A_im", "C_re", "C_im", "D")),
                out_p["weight"],
                out_p["bias"],
            )
            return out, (torch.view_as_complex(h_new),)
        _, A_bar, B_bar, C = self.discretize()
        h = A_bar * h + B_bar * x[..., None]
        y = 2 * (C * h).real.sum(-1)
        return self._output(y, x), (h,)


def hippo_n_eigen(n: int) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the normal part of HiPPO-LegS (the S5 initialisation).

    HiPPO-LegS is ``A = S - P Pᵀ`` with ``S`` normal (``-1/2 I`` plus a skew-symmetric matrix), so
    ``S = V Λ V*`` with ``Re Λ = -1/2``. Returns ``(Λ, V)`` in complex128.
    """
    q = torch.sqrt(1 + 2 * torch.arange(n, dtype=torch.float64))
    A = torch.tril(q[:, None] * q[None, :]) - torch.diag(torch.arange(n, dtype=torch.float64))
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    S = -A + p[:, None] * p[None, :]
    S_skew = S + 0.5 * torch.eye(n, dtype=torch.float64)  # skew-symmetric: use eigh on -i S_skew
    evals, V = torch.linalg.eigh(S_skew * -1j)
    return -0.5 + 1j * evals, V


class S5(_DiagonalLTI):
    """S5 (Smith, Warrington & Linderman, 2023, "Simplified State Space Layers for Sequence
    Modeling"): one MIMO diagonal system of ``d_state/2`` complex modes shared by all channels,
    computed with a parallel associative scan (:func:`diagonal_linear_scan`).

    Λ, B̃ = V⁻¹B and C̃ = CV come from the HiPPO-N eigenbasis, with a learnable step Δ per mode.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1):
        super().__init__(d_model)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S5 d_state must be an even int >= 2, got {d_state}")
        self.d_state = d_state
        m, h = d_state // 2, d_model
        lam, V = hippo_n_eigen(d_state)
        # Keep one mode of each conjugate pair (positive imaginary part).
        order = torch.argsort(lam.imag, descending=True)[:m]
        lam, V = lam[order], V[:, order]
        Vinv = V.conj().T  # V is unitary
        B = torch.randn(d_state, h, dtype=torch.float64) / math.sqrt(h)  # lecun normal
        Cmat = torch.randn(h, d_state, dtype=torch.float64) / math.sqrt(2 * d_state)
        B_t = Vinv @ B.to(torch.complex128)  # (m, H)
        C_t = Cmat.to(torch.complex128) @ V  # (H, m)
        self.Lambda_re_log = nn.Parameter(torch.log(-lam.real).float())
        self.Lambda_im = nn.Parameter(lam.imag.float())
        self.B_re, self.B_im = nn.Parameter(B_t.real.float()), nn.Parameter(B_t.imag.float())
        self.C_re, self.C_im = nn.Parameter(C_t.real.float()), nn.Parameter(C_t.imag.float())
        self.log_dt = nn.Parameter(_log_uniform((m,), dt_min, dt_max))

    def state_shapes(self, batch_size: int):
        return [((batch_size, self.d_state // 2), True)]

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Λ̄ (P), B̄ (P, H), C̃ (H, P))``, complex, P = d_state/2."""
        lam = torch.complex(-torch.exp(self.Lambda_re_log), self.Lambda_im)
        A_bar = torch.exp(torch.exp(self.log_dt) * lam)
        B_bar = ((A_bar - 1) / lam)[:, None] * torch.complex(self.B_re, self.B_im)
        return A_bar, B_bar, torch.complex(self.C_re, self.C_im)

    def _forward(self, x: Tensor, state: State | None, resets: Tensor | None):
        A_bar, B_bar, C = self.discretize()
        bu = torch.einsum("blh,ph->blp", x.to(B_bar.dtype), B_bar)  # (B L P)
        if resets is None:
            a = A_bar  # time-invariant: squared at each doubling
        else:
            a = A_bar * (~resets).to(x.dtype)[..., None]  # (B L P): a reset cuts the chain
        hs = diagonal_linear_scan(a, bu, None if state is None else state[0], dim=1)
        y = 2 * torch.einsum("blp,hp->blh", hs, C).real
        return self._output(y, x), (hs[:, -1],)

    def _step(self, x: Tensor, state: State):
        (h,) = state
        if self.fused_step_ready(x):
            p, out_p = self._parameters, self._modules["out_proj"]._parameters
            names = ("Lambda_re_log", "Lambda_im", "B_re", "B_im", "C_re", "C_im", "log_dt", "D")
            out, h_new = _backend.cpu_ext().s5_step(
                x.contiguous(),
                torch.view_as_real(h.contiguous()),
                *(p[k] for k in names),
                out_p["weight"],
                out_p["bias"],
            )
            return out, (torch.view_as_complex(h_new),)
        A_bar, B_bar, C = self.discretize()
        h = A_bar * h + x.to(B_bar.dtype) @ B_bar.T
        y = 2 * (h @ C.T).real
        return self._output(y, x), (h,)
