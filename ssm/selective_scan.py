"""The selective scan of Mamba (Gu & Dao, 2023), with mamba-ssm's ``selective_scan_fn`` signature.

For each batch ``b`` and channel ``d`` the state ``h (N,)`` follows, with ``Δ = softplus(δ + bias)``
when ``delta_softplus`` is set:

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t          (zero-order hold on A, Euler on B)
    y_t = C_t · h_t + D u_t,       out_t = y_t · silu(z_t)

Shapes follow mamba-ssm: ``u, delta, z: (B, D, L)``, ``A: (D, N)``, ``B, C: (D, N)`` (fixed),
``(B, N, L)`` (selective) or ``(B, G, N, L)`` (grouped), ``D, delta_bias: (D,)``.

Two extensions, both keyword-only and off by default so the two functions stay swappable:
``initial_state (B, D, N)`` and ``resets (B, L) bool`` (zero the state before step t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backend as _backend
from .chunked_scan import chunked_linear_scan
from .selective_recurrence import core_scan
from .step_stack import stack_steps


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state, resets):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, Tensor):
            raise ValueError(f"selective_scan: {name} must be a tensor, got {type(t).__name__}")
        if not (t.is_floating_point() or t.is_complex()):
            raise ValueError(f"selective_scan: {name} must be floating point, got {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if tuple(delta.shape) != (batch, dim, length):
        raise ValueError(
            f"selective_scan: delta must be {(batch, dim, length)} like u, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (D={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (
            (M.dim() == 2 and tuple(M.shape) == (dim, n))
            or (M.dim() == 3 and M.shape[0] == batch and M.shape[2] == length)
            or (
                M.dim() == 4
                and M.shape[0] == batch
                and M.shape[3] == length
                and dim % M.shape[1] == 0
            )
        )
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (D, N)=({dim}, {n}), (B, N, L)=({batch}, {n}, "
                f"{length}) or (B, G, N, L) with G dividing D, got {tuple(M.shape)}"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be ({dim},), got {tuple(v.shape)}")
    if z is not None and tuple(z.shape) != (batch, dim, length):
        raise ValueError(f"selective_scan: z must be {(batch, dim, length)}, got {tuple(z.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, n):
        raise ValueError(
            f"selective_scan: initial_state must be {(batch, dim, n)}, "
            f"got {tuple(initial_state.shape)}"
        )
    if resets is not None and (
        resets.dtype != torch.bool or tuple(resets.shape) != (batch, length)
    ):
        raise ValueError(
            f"selective_scan: resets must be a bool tensor of shape "
            f"{(batch, length)}, got {resets.dtype} {tuple(resets.shape)}"
        )


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


def _full_BC(A: Tensor, B: Tensor, C: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """B, C as (D, N) or (B, N, L) or (B, D, N, L): complex when A is, groups repeated."""
    if A.is_complex():
        if B.dim() >= 3:
            B = torch.view_as_complex(B.unflatten(-1, (-1, 2)).contiguous())  # (.. 2L)->(.. L 2)
        if C.dim() >= 3:
            C = torch.view_as_complex(C.unflatten(-1, (-1, 2)).contiguous())  # (.. 2L)->(.. L 2)
    if B.dim() == 4:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (b g n l) -> (b (g h) n l)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)  # (b g n l) -> (b (g h) n l)
    return B, C


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    resets: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The reference: a plain loop over time on ``(B, D, N)`` states. Differentiable to any order
    and usable under ``torch.func.vmap``; the fused kernels are checked against it."""
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    B, C = _full_BC(A, B, C, dim)

    # Per-step slices come from unbind (one cheap backward for all steps), outputs are joined by
    # stack_steps (likewise), and each step works on (B, D, N) tensors only: nothing of size
    # B·D·L·N is materialised, in forward or backward.
    def per_step(M: Tensor) -> list[Tensor]:
        if M.dim() == 2:  # fixed (D, N)
            return [M] * length
        steps = M.unbind(-1)  # (B, N) or (B, D, N)
        return [m[:, None] if M.dim() == 3 else m for m in steps]

    deltas, us, Bs, Cs = delta.unbind(-1), u.unbind(-1), per_step(B), per_step(C)
    cdtype = torch.promote_types(A.dtype, delta.dtype)
    h = (
        initial_state.to(cdtype)
        if initial_state is not None
        else u.new_zeros(batch, dim, A.shape[1], dtype=cdtype)
    )
    keeps = None if resets is None else (~resets).to(delta.dtype).unbind(-1)  # (B,) per step
    ys = []
    for t in range(length):
        if keeps is not None:
            h = h * keeps[t][:, None, None]
        dt = deltas[t][..., None]  # (B D 1)
        h = torch.exp(dt * A) * h + (dt * us[t][..., None]) * Bs[t]  # (B D N)
        ys.append((h * Cs[t]).sum(-1))  # (B D)
    y = stack_steps(ys, dim=-1)  # (B D L)
    if y.is_complex():
        y = y.real * 2
    out = _finish(y, u, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    resets: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The reference's recurrence through :func:`ssm.chunked_scan.chunked_linear_scan`
    (``a_t = exp(Δ_t A)``, ``b_t = Δ_t u_t B_t`` on ``(B, L, D, N)`` states): about ``2√L``
    Python steps instead of ``L``, the same values to rounding, derivatives of any order and
    ``torch.func`` transforms. Materialises every state (``B·L·D·N``), so it is the accelerator
    path (CUDA calls that carry an initial state or resets); on CPU the fused kernels win."""
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    B, C = _full_BC(A, B, C, dim)

    def time_major(M: Tensor) -> Tensor:  # -> broadcastable against (B L D N)
        if M.dim() == 2:  # fixed (D N)
            return M[None, None]
        if M.dim() == 3:  # (B N L) -> (B L 1 N)
            return M.permute(0, 2, 1)[:, :, None]
        return M.permute(0, 3, 1, 2)  # (B D N L) -> (B L D N)

    dt = delta.transpose(1, 2)[..., None]  # (B L D 1)
    a = torch.exp(dt * A)  # (B L D N)
    b = (dt * u.transpose(1, 2)[..., None]) * time_major(B)  # (B L D N)
    cdtype = torch.promote_types(A.dtype, delta.dtype)
    if b.dtype != cdtype:
        b = b.to(cdtype)
    h0 = None if initial_state is None else initial_state.to(cdtype)
    states, h = chunked_linear_scan(a, b, h0, resets, chunk)  # (B L D N), (B D N)
    y = (states * time_major(C)).sum(-1).transpose(1, 2)  # (B D L)
    if y.is_complex():
        y = y.real * 2
    out = _finish(y, u, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


# -- fused paths --------------------------------------------------------------------------------
class _FusedScan(torch.autograd.Function):
    """The fused CPU scan ``(u, δ, A, B, C, D, z, bias, softplus, h0, resets) -> (out, h_L)``.

    ``B, C`` arrive as ``(B, G, L, N)`` contiguous; absent optional inputs as empty tensors. The
    backward recomputes everything per channel inside the kernel (nothing of size B·D·L·N is
    saved). If a graph of the backward is asked for (``create_graph=True``), it differentiates
    the reference instead, so double backward stays exact.
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct, D, z, bias, softplus, h0, resets):
        out, h_last = _backend.cpu_ext().selective_scan_fwd(
            u, delta, A, Bt, Ct, D, z, bias, softplus, h0, resets
        )
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, bias, h0, resets)
        return out, h_last

    @staticmethod
    def backward(ctx, g_out, g_last):
        u, delta, A, Bt, Ct, D, z, bias, h0, resets = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _graph_grads(ctx, g_out, g_last)
        g_out = g_out.contiguous() if g_out is not None else torch.zeros_like(u)
        g_last = g_last.contiguous() if g_last is not None else torch.zeros_like(h0)
        du, dd, dA, dB, dC, dD, dz, dbias, dh0 = _backend.cpu_ext().selective_scan_bwd(
            u, delta, A, Bt, Ct, D, z, bias, ctx.softplus, h0, resets, g_out, g_last
        )
        none_if_empty = [t if t.numel() else None for t in (dD, dz, dbias)]
        return (du, dd, dA, dB, dC, *none_if_empty[:2], none_if_empty[2], None, dh0, None)


class FirstOrderKernel(torch.autograd.Function):
    """Wraps a first-order-only kernel (mamba-ssm's CUDA scan) so that gradients stay exact.

    ``fast(*inputs)`` runs in forward with a private graph; backward differentiates that graph,
    except when a graph of the backward is asked for (``create_graph=True``) or the last state
    receives a gradient (mamba-ssm does not propagate one): then it recomputes through
    ``ref(*inputs)``, which is differentiable to any order. ``fast`` and ``ref`` return
    ``(out, last_state)``.
    """

    @staticmethod
    def forward(ctx, fast, ref, *inputs):
        ctx.set_materialize_grads(False)
        ctx.ref = ref
        with torch.enable_grad():
            private = [
                t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t
                for t in inputs
            ]
            out, last = fast(*private)
        ctx.private = (private, out)
        ctx.save_for_backward(*[t if isinstance(t, Tensor) else None for t in inputs])
        ctx.non_tensor = [None if isinstance(t, Tensor) else t for t in inputs]
        return out.detach(), last.detach()

    @staticmethod
    def backward(ctx, g_out, g_last):
        saved = ctx.saved_tensors
        # Aliases: partial derivatives through this call only (see _graph_grads).
        inputs = [s.view_as(s) if s is not None else n for s, n in zip(saved, ctx.non_tensor)]
        wants = [
            isinstance(t, Tensor) and need for t, need in zip(inputs, ctx.needs_input_grad[2:])
        ]
        if torch.is_grad_enabled() or g_last is not None:
            _backend.log_once(
                "first-order-fallback",
                "ssm: double backward or a gradient of the "
                "last state: recomputing the scan's gradient through the reference",
            )
            with torch.enable_grad():
                outs = ctx.ref(*inputs)
        else:
            private, out = ctx.private
            inputs, outs = private, (out, None)
        grads = _partial_grads(outs, (g_out, g_last), inputs, wants, torch.is_grad_enabled())
        return (None, None, *grads)


def _partial_grads(outs, grads_out, inputs, wants, create_graph: bool) -> list:
    """Vector-Jacobian product of ``outs`` (those with a gradient) with respect to the ``inputs``
    flagged in ``wants``; ``None`` for the others and for inputs that did not contribute."""
    pairs = [(o, g) for o, g in zip(outs, grads_out) if g is not None and o is not None]
    wrt = [t for t, w in zip(inputs, wants) if w]
    grads = iter(
        torch.autograd.grad(
            [o for o, _ in pairs],
            wrt,
            [g for _, g in pairs],
            create_graph=create_graph,
            retain_graph=True,  # a private forward graph lives as long as ctx, like any saved one
            allow_unused=True,
        )
    )
    return [next(grads) if w else None for w in wants]


def _core_path(u, delta, A, Bt, Ct, D, z, bias, softplus, h0, resets):
    """The twice-differentiable fused path: :func:`ssm.selective_recurrence.core_scan` inside
    torch's elementwise prologue and epilogue. B, C as (B, G, L, N); absent inputs None."""
    dt = _prepare_delta(delta, bias, softplus)
    y, h_last = core_scan(u, dt, A, Bt, Ct, h0, resets)
    return _finish(y, u, D, z), h_last


def _core_fused_layout(u, delta, A, Bt, Ct, D, z, bias, softplus, h0, resets):
    """:func:`_core_path` on _FusedScan's inputs (empty = absent)."""

    def opt(t):
        return t if t.numel() else None

    return _core_path(u, delta, A, Bt, Ct, opt(D), opt(z), opt(bias), softplus, h0, opt(resets))


def _graph_grads(ctx, g_out, g_last):
    """The backward when a graph of it is asked for (``create_graph=True``): recomputed through
    the twice-differentiable fused core, so a double backward stays exact and fused."""
    saved = ctx.saved_tensors
    resets = saved[-1]
    # Fresh aliases, so each gradient is the partial derivative through this scan only (inputs
    # may depend on each other, e.g. Δ, B, C on u); the aliases keep the graph to the inputs.
    inputs = tuple(t.view_as(t) for t in saved[:-1])
    u, delta, A, Bt, Ct, D, z, bias, h0 = inputs
    needs = [n for i, n in enumerate(ctx.needs_input_grad) if i not in (8, 10)]  # skip flags
    with torch.enable_grad():
        outs = _core_fused_layout(u, delta, A, Bt, Ct, D, z, bias, ctx.softplus, h0, resets)
    result = _partial_grads(outs, (g_out, g_last), inputs, needs, create_graph=True)
    du, dd, dA, dB, dC, dD, dz, dbias, dh0 = result
    return du, dd, dA, dB, dC, dD, dz, dbias, None, dh0, None


def _rows_contiguous(t: Tensor) -> Tensor:
    """``t`` (B, D, L) as is when each batch is one contiguous (D, L) block (e.g. a chunk of
    in_proj's output), else a contiguous copy."""
    ok = t.stride(2) == 1 and t.stride(1) == t.shape[2]
    return t if ok else t.contiguous()


def _grouped(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B, C as (B, G, N, L) with one shared group count."""
    B = B[:, None] if B.dim() == 3 else B
    C = C[:, None] if C.dim() == 3 else C
    if B.shape[1] != C.shape[1]:  # one grouped, one not: share the group count
        g = max(B.shape[1], C.shape[1])
        B, C = B.expand(-1, g, -1, -1), C.expand(-1, g, -1, -1)
    return B, C


def _core_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, resets):
    """The fused path that every ``torch.func`` transform and any order of derivative can go
    through (:mod:`ssm.selective_recurrence`); elementwise pre- and post-processing in torch."""
    batch, dim, _ = u.shape
    dtype = u.dtype
    B, C = _grouped(B, C)
    h0 = u.new_zeros(batch, dim, A.shape[1]) if h0 is None else h0.to(dtype)
    Bt, Ct = B.transpose(-1, -2).to(dtype), C.transpose(-1, -2).to(dtype)  # (B G L N)
    delta, A = delta.to(dtype), A.to(dtype)
    return _core_path(u, delta, A, Bt, Ct, D, z, delta_bias, delta_softplus, h0, resets)


def _fused_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, resets):
    batch, dim, _ = u.shape
    dtype = u.dtype
    B, C = _grouped(B, C)
    empty = u.new_empty(0)

    def prep(t):
        return empty if t is None else t.to(dtype).contiguous()

    return _FusedScan.apply(
        u.contiguous(),
        delta.to(dtype).contiguous(),
        A.to(dtype).contiguous(),
        B.transpose(-1, -2).to(dtype).contiguous(),  # (B G L N)
        C.transpose(-1, -2).to(dtype).contiguous(),
        prep(D),
        empty if z is None else _rows_contiguous(z.to(dtype)),
        prep(delta_bias),
        bool(delta_softplus),
        u.new_zeros(batch, dim, A.shape[1]) if h0 is None else h0.to(dtype).contiguous(),
        torch.zeros(0, dtype=torch.bool) if resets is None else resets.contiguous(),
    )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    resets: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the signature and semantics of mamba-ssm's ``selective_scan_fn``.

    ``backend="auto"`` uses mamba-ssm's CUDA kernel for CUDA tensors when installed, and the
    chunked torch scan (:func:`selective_scan_chunked`) for CUDA calls the kernel cannot take
    (an initial state or resets, a ``torch.func`` transform, mamba-ssm missing); the fused C++
    kernels on CPU: inside ``torch.func`` transforms the twice-differentiable
    :func:`ssm.selective_recurrence.core_scan`.
    ``backend="torch"`` pins the reference, ``backend="chunked"`` the chunked scan (any device).
    Every path returns the same values (to float tolerance) and exact derivatives of any order.
    (The CUDA branches are not exercised by the CPU test suite.)
    """
    _backend.check_backend(backend)
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state, resets)
    kw = dict(initial_state=initial_state, resets=resets)
    real_selective = (not A.is_complex()) and B.dim() >= 3 and C.dim() >= 3
    g_b, g_c = (B.shape[1] if B.dim() == 4 else 1), (C.shape[1] if C.dim() == 4 else 1)
    groups_fit = g_b == g_c or min(g_b, g_c) == 1
    in_transform = _backend.functorch_active()  # first-order kernels cannot run under torch.func
    if (
        real_selective
        and groups_fit
        and not in_transform
        and _backend.use_cpu_fused(u, delta, A, B, C, backend=backend)
    ):
        out, h_last = _fused_cpu(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, resets
        )
        return (out, h_last) if return_last_state else out
    if real_selective and groups_fit and _backend.use_cpu_core(u, delta, A, B, C, backend=backend):
        out, h_last = _core_cpu(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, resets
        )
        return (out, h_last) if return_last_state else out
    if _backend.use_cuda_fused(u, delta, A, B, C, backend=backend):
        if initial_state is not None or resets is not None:
            _backend.log_once(
                "cuda-state",
                "ssm: mamba-ssm's scan takes no initial state or resets; using the chunked "
                "torch scan for calls that carry them",
            )
            return selective_scan_chunked(
                u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, **kw
            )
        fn = _backend.mamba_ssm_scan_fn()

        def fast(*a):
            return fn(*a, delta_softplus, True)

        def ref(*a):
            return selective_scan_ref(*a, delta_softplus, True)

        out, last = FirstOrderKernel.apply(fast, ref, u, delta, A, B, C, D, z, delta_bias)
        return (out, last) if return_last_state else out
    if _backend.use_chunked_scan(u, delta, A, B, C, backend=backend):
        return selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, **kw
        )
    return selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, **kw
    )
