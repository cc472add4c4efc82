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
from .scan import diagonal_linear_scan


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
        """``Λ̄^l`` for ``l = 0 .. count-1`` as ``(H, N/2, count)``.

        Computed as ``Λ̄^(c·i) Λ̄^j`` from two small tables of ``exp(l ΔΛ)`` (c ≈ √count), which
        replaces ``count`` complex exponentials per mode by ~2√count and one product each."""
        c = max(1, math.isqrt(count))
        while count % c:  # an exact factorisation avoids slicing (and its backward) below
            c -= 1
        if c < math.isqrt(count) // 4:
            c = max(1, math.isqrt(count))
        rows = -(-count // c)
        ar = torch.arange(max(c, rows), device=dtA.device, dtype=dtA.real.dtype)
        fine = torch.exp(dtA[..., None] * ar[:c])  # Λ̄^j, j < c
        coarse = torch.exp(dtA[..., None] * (c * ar[:rows]))  # Λ̄^(c i)
        V = (coarse[..., :, None] * fine[..., None, :]).flatten(-2)
        return V if V.shape[-1] == count else V[..., :count]

    def _final_state(self, x, V, A_bar, B_bar, h0, seg):
        """``h_{L-1} = Σ_{s in the last episode} Λ̄^{L-1-s} B̄ u_s (+ Λ̄^L h0 if no reset)``, with
        ``V = Λ̄^0 .. Λ̄^{L-1}`` as ``(H, N/2, L)``."""
        u = x if seg is None else x * (seg == seg[:, -1:]).to(x.dtype)[..., None]
        # Real u (time-reversed) against complex powers, as one real batched matmul over channels
        # h; bmm is only fast on batch-contiguous operands, hence the copies.
        Vr = torch.view_as_real(V.transpose(1, 2)).flatten(-2).contiguous()  # (H L 2N)
        s = torch.bmm(u.flip(1).permute(2, 0, 1).contiguous(), Vr)  # (H B 2N)
        h_last = torch.view_as_complex(s.unflatten(-1, (-1, 2)).contiguous()).transpose(0, 1)
        h_last = h_last * B_bar  # (B H N)
        if h0 is not None:
            carry = V[..., -1] * A_bar * h0
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
        V = self._powers(dtA, length)  # (H N L): Λ̄^0 .. Λ̄^{L-1}
        K = 2 * torch.einsum("hn,hnl->hl", C * B_bar, V).real  # (H L)
        u = x.transpose(1, 2)  # (B H L)
        n_fft = 2 * length
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft)
        y = y[..., :length]  # (B H L)
        if h0 is not None:  # the initial state's echo: 2 Re(C Λ̄^{t+1} h0)
            y = y + 2 * torch.einsum("bhn,hnl->bhl", h0, (C * A_bar)[..., None] * V).real
        h_last = self._final_state(x, V, A_bar, B_bar, h0, None)
        return self._output(y.transpose(1, 2), x), (h_last,)

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
        V = self._powers(dtA, max(T + 1, length))  # (H N ·)
        K = 2 * torch.einsum("hn,hnl->hl", C * B_bar, V[..., :T]).real  # (H T)
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
        local_end = torch.einsum("bcsh,hns->bchn", u_end, V[..., :T].flip(-1)) * B_bar
        decay = passes[..., -1, None, None] * V[..., T]  # (B C H N)
        if h0 is None:
            h0 = local_end.new_zeros(batch, h, self.d_state // 2)
        ends = diagonal_linear_scan(decay, local_end, h0, dim=1)  # (B C H N): state at chunk end
        entering = torch.cat([h0[:, None], ends[:, :-1]], dim=1)  # (B C H N)
        echo = 2 * torch.einsum("bchn,hnt->bcth", entering, C[..., None] * V[..., 1 : T + 1]).real
        y = (y + echo * passes[..., None]).reshape(batch, n_chunks * T, h)[:, :length]
        h_last = self._final_state(x, V[..., :length], A_bar, B_bar, h0, seg)
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
