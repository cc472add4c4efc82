"""Mamba: the selective-SSM block of Gu & Dao (2023), "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces".

    x, z   = split(in_proj(u))                        (B L 2E) -> 2 x (B L E)
    x      = silu(causal_depthwise_conv1d(x))         width d_conv, one filter per channel
    Δ, B, C = dt_proj(x W_Δ), x W_B, x W_C            input-dependent: the "selection"
    y      = selective_scan(x, Δ, A=-exp(A_log), B, C, D) * silu(z)
    out    = out_proj(y)

The recurrent state is ``(conv_state (B, E, d_conv), ssm_state (B, E, N))``: the last ``d_conv``
conv inputs and the SSM state. A reset zeroes both, so nothing before it leaks through the conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend as _backend
from .base import SequenceLayer, State
from .selective_scan import selective_scan


def causal_depthwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor, history: Tensor, resets: Tensor | None
) -> Tensor:
    """Causal depthwise conv over ``x (B, E, L)`` with ``history (B, E, K)`` as the inputs before
    step 0 (only the last K-1 are used):  ``y_t = b + Σ_j w_j x_{t-(K-1)+j}``.

    With ``resets (B, L)``, a tap is masked when a reset lies between it and t, so the window
    never reaches into a previous episode. Written as K shifted multiply-adds rather than
    ``F.conv1d``: K is tiny (4), this is as fast, works the same with and without resets, under
    ``vmap`` and to any order, and avoids a very slow depthwise-conv backward on some CPUs.
    """
    k, length = weight.shape[-1], x.shape[-1]
    xp = torch.cat([history[..., 1:], x], dim=-1)  # (B E K-1+L)
    w = weight[:, 0, :]  # (E K)
    if resets is not None:
        seg = torch.cumsum(resets.to(torch.int64), dim=1)  # episode index of each step, (B L)
        seg_p = torch.cat([seg.new_zeros(seg.shape[0], k - 1), seg], dim=1)  # history: episode 0
    y = bias[:, None].expand(x.shape[1], length)
    for j in range(k):
        tap = xp[..., j : j + length]  # x_{t-(K-1)+j}
        if resets is not None:
            tap = tap * (seg_p[:, j : j + length] == seg).to(x.dtype)[:, None, :]
        y = y + w[:, j, None] * tap
    return y


class Mamba(SequenceLayer):
    """The Mamba block (without the residual and norm, which :class:`SequencePolicy` adds)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = _backend.check_backend(backend)
        e, n = self.d_inner, d_state

        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, bias=conv_bias)
        if not conv_bias:
            self.conv1d.bias = nn.Parameter(torch.zeros(e), requires_grad=False)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True)
        # Δ initialised log-uniform in [dt_min, dt_max] through the bias (inverse softplus).
        dt_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        dt = torch.exp(torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real initialisation A_n = -(n+1).
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1)
        )
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d_model, bias=bias)

    def state_shapes(self, batch_size: int):
        return [
            ((batch_size, self.d_inner, self.d_conv), False),
            ((batch_size, self.d_inner, self.d_state), False),
        ]

    def _forward(self, x: Tensor, state: State, resets: Tensor | None) -> tuple[Tensor, State]:
        # resets[:, 0] needs no special case: the conv mask and the scan both apply it.
        conv_state, ssm_state = state or self.zeros_like_state(x)
        # Channels-first (B, E, L) throughout, as the scan wants it: each projection is one
        # matmul whose output is already in that layout, so no large transposes are copied.
        xz = torch.matmul(self.in_proj.weight, x.transpose(1, 2))  # (B 2E L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        xin, z = xz.chunk(2, dim=1)  # (B E L) each
        xc = F.silu(
            causal_depthwise_conv(xin, self.conv1d.weight, self.conv1d.bias, conv_state, resets)
        )  # (B E L)
        x_dbl = torch.matmul(self.x_proj.weight, xc)  # (B R+2N L)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        y, ssm_last = selective_scan(
            xc,
            torch.matmul(self.dt_proj.weight, dt),  # (B E L)
            -torch.exp(self.A_log),
            b,  # (B N L)
            c,
            self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            return_last_state=True,
            initial_state=None if state is None else ssm_state,
            resets=resets,
            backend=self.backend,
        )
        # out_proj as W @ y, so that y's gradient comes back channels-first like y itself (a
        # (B L E) gradient would meet (B E L) tensors in every elementwise backward op); the
        # transpose is paid on the narrower output.
        out = torch.matmul(self.out_proj.weight, y)  # (B D L)
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias[:, None]
        out = out.transpose(1, 2)  # (B L D)
        # The new conv state holds the last d_conv inputs, or fewer (zero-padded) after a reset.
        k = self.d_conv
        hist = torch.cat([conv_state, xin[..., -k:]], dim=-1)[..., -k:]  # (B E K)
        if resets is not None:
            seg = torch.cumsum(resets.to(torch.int64), dim=1)
            seg_p = torch.cat([seg.new_zeros(seg.shape[0], k), seg], dim=1)[:, -k:]
            hist = hist * (seg_p == seg[:, -1:]).to(x.dtype)[:, None, :]
        return out, (hist, ssm_last)

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        conv_state, ssm_state = state
        if self.fused_step_ready(x):
            weights = self._fused_step_weights()
            if weights is not None:
                out, conv_new, ssm_new = _backend.cpu_ext().mamba_step(
                    x.contiguous(), conv_state.contiguous(), ssm_state.contiguous(), *weights
                )
                return out, (conv_new, ssm_new)
        xin, z = self.in_proj(x).chunk(2, dim=-1)  # (B E) each
        conv_state = torch.cat([conv_state[..., 1:], xin[..., None]], dim=-1)  # (B E K)
        w = self.conv1d.weight.squeeze(1)  # (E 1 K) -> (E K)
        xc = F.silu((conv_state * w).sum(-1) + self.conv1d.bias)  # (B E)
        dt, b, c = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], -1)
        dt = F.softplus(self.dt_proj(dt))  # (B E)
        A = -torch.exp(self.A_log)  # (E N)
        ssm_state = torch.exp(dt[..., None] * A) * ssm_state + (dt * xc)[..., None] * b[:, None]
        y = (ssm_state * c[:, None]).sum(-1) + self.D * xc
        out = self.out_proj(y * F.silu(z))
        return out, (conv_state, ssm_state)

    def _fused_step_weights(self) -> tuple[Tensor, ...] | None:
        """The tensors the fused step takes, or None where it does not apply (projection biases).

        Read straight from the ``_parameters`` dicts: this runs on every acting step, where
        ``nn.Module.__getattr__`` would cost more than the step's arithmetic; ``functional_call``
        swaps entries of these same dicts, so swapped parameters are seen."""
        m, p = self._modules, self._parameters
        in_p, out_p = m["in_proj"]._parameters, m["out_proj"]._parameters
        if in_p["bias"] is not None or out_p["bias"] is not None:
            return None
        conv, dt = m["conv1d"]._parameters, m["dt_proj"]._parameters
        return (
            in_p["weight"],
            conv["weight"],
            conv["bias"],
            m["x_proj"]._parameters["weight"],
            dt["weight"],
            dt["bias"],
            p["A_log"],
            p["D"],
            out_p["weight"],
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, backend={self.backend!r}"
        )
