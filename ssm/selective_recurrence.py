"""The selective scan's recurrence as a fused CPU op that is differentiable to any order and
works under every ``torch.func`` transform (``grad``, ``vjp``, ``jvp``, ``vmap``).

    h_t = exp(dt_t ⊙ A) ⊙ (keep_t h_{t-1}) + dt_t u_t B_t,        y_t = <C_t, h_t>

is :func:`core_scan`; softplus, the skip ``D u`` and the gate stay in torch around it (they are
elementwise on ``(B, D, L)``, cheap, and differentiate themselves). Layouts: ``u, dt (B, D, L)``,
``A (B, D, N)`` (one matrix per sequence: a vmapped batch of adapted parameters folds into the
batch), ``Bt, Ct (B, G, L, N)``, ``h0 (B, D, N)``, ``resets (B, L)`` bool or None.

How every derivative stays fused (``ssm/csrc/ssm_cpu.cpp``: a forward, a backward, and the
forward-mode (JVP) versions of both, each a single kernel that recomputes the states per channel):

* forward ``F(x)``: the C++ forward; its JVP ``J(x) ẋ``: the forward's JVP kernel;
* backward ``J(x)ᵀ g`` (:class:`_CoreBwd`): the C++ backward; its JVP (forward-over-reverse
  Hessian-vector products): the backward's JVP kernel;
* double backward, for a cotangent ``w`` of the backward's outputs: with respect to ``g`` it is
  ``J(x) w``, and with respect to ``x`` it is ``∂/∂x (gᵀ J(x) w)``, which by the symmetry of
  second derivatives equals the tangent of ``J(x + εw)ᵀ g``: the backward's JVP kernel, which
  returns ``J(x) w`` from the same recompute.

A third derivative (e.g. MAML-TRPO's exact Fisher through the inner loop) differentiates the
JVP kernels themselves; :class:`_CoreJvp` does that exactly through the pure-torch reference
(slow, but exact). Under ``vmap`` every one of these ops folds the mapped dimension into its
batch dimension (:func:`_fold_vmap`), so a meta-batch of tasks is one kernel call.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from . import backend as _backend
from .step_stack import stack_steps

__all__ = ["core_scan", "core_scan_ref"]


def core_scan_ref(
    u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, h0: Tensor, resets: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The recurrence in plain torch (a loop over time): the oracle for the fused op."""
    dim, groups = u.shape[1], Bt.shape[1]

    def steps(M: Tensor) -> list[Tensor]:  # (B, G, L, N) -> L x (B, D, N)
        return [m.repeat_interleave(dim // groups, dim=1) for m in M.unbind(2)]

    Bs, Cs, dts, us = steps(Bt), steps(Ct), dt.unbind(-1), u.unbind(-1)
    keeps = None if resets is None else (~resets).to(u.dtype).unbind(-1)
    h, ys = h0, []
    for t in range(u.shape[-1]):
        if keeps is not None:
            h = h * keeps[t][:, None, None]
        d = dts[t][..., None]
        h = torch.exp(d * A) * h + (d * us[t][..., None]) * Bs[t]
        ys.append((h * Cs[t]).sum(-1))
    return stack_steps(ys, dim=-1), h


def _fold_vmap(cls):
    """A ``vmap`` rule for an op whose tensor inputs and outputs all lead with the batch: the
    mapped dimension is moved to the front and merged into the batch (unmapped inputs are
    expanded), the op runs once, and its outputs are split back."""

    def vmap(info, in_dims, *args):
        size = info.batch_size
        folded = []
        for a, d in zip(args, in_dims):
            if isinstance(a, Tensor):
                a = a.movedim(d, 0) if d is not None else a.expand(size, *a.shape)
                a = a.reshape(size * a.shape[1], *a.shape[2:])
            folded.append(a)
        outs = cls.apply(*folded)
        outs = tuple(o.reshape(size, o.shape[0] // size, *o.shape[1:]) for o in outs)
        return outs, (0,) * len(outs)

    cls.vmap = staticmethod(vmap)
    return cls


def _ext():
    return _backend.cpu_ext()


def _resets_arg(resets: Tensor | None) -> Tensor:
    return torch.zeros(0, dtype=torch.bool) if resets is None else resets.contiguous()


def _zeros_if_none(ts, like) -> list[Tensor]:
    return [torch.zeros_like(x) if t is None else t for t, x in zip(ts, like)]


@_fold_vmap
class _Core(Function):
    """``(u, dt, A, Bt, Ct, h0, resets) -> (y, h_L)``."""

    @staticmethod
    def forward(u, dt, A, Bt, Ct, h0, resets):
        x = [t.contiguous() for t in (u, dt, A, Bt, Ct, h0)]
        y, h_last = _ext().core_scan_fwd(*x, _resets_arg(resets))
        return y, h_last

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, gy, g_last):
        *x, resets = ctx.saved_tensors
        return (*_CoreBwd.apply(*x, resets, gy, g_last), None)

    @staticmethod
    def jvp(ctx, *tangents):
        *x, resets = ctx.saved_tensors
        return _CoreJvp.apply("fwd", resets, *x, *_zeros_if_none(tangents[:6], x))


@_fold_vmap
class _CoreBwd(Function):
    """``(x, resets, gy, g_last) -> J(x)ᵀ (gy, g_last)`` for ``x = (u, dt, A, Bt, Ct, h0)``."""

    @staticmethod
    def forward(u, dt, A, Bt, Ct, h0, resets, gy, g_last):
        x = [t.contiguous() for t in (u, dt, A, Bt, Ct, h0, gy, g_last)]
        return tuple(_ext().core_scan_bwd(*x[:6], _resets_arg(resets), *x[6:]))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, *w):
        *x, resets, gy, g_last = ctx.saved_tensors  # grads are materialised: no w is None
        # d/dx (wᵀ J(x)ᵀ g): the tangent of the backward at x + εw (symmetric second derivatives)
        # and d/dg (wᵀ J(x)ᵀ g) = J(x) w, which the backward's JVP kernel returns beside it
        zg = (torch.zeros_like(gy), torch.zeros_like(g_last))
        *gx, gy_bar, g_last_bar = _CoreJvp.apply("bwd+fwd", resets, *x, gy, g_last, *w, *zg)
        return (*gx, None, gy_bar, g_last_bar)

    @staticmethod
    def jvp(ctx, *tangents):
        *x, resets, gy, g_last = ctx.saved_tensors
        tx = _zeros_if_none(tangents[:6], x)
        tg = _zeros_if_none(tangents[7:], (gy, g_last))
        return _CoreJvp.apply("bwd", resets, *x, gy, g_last, *tx, *tg)


def _jvp_ref(mode: str, resets: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """What :class:`_CoreJvp` computes, through the reference and ``torch.func``."""
    tensors = tuple(t.contiguous() for t in tensors)  # forward-mode AD refuses expanded tangents

    def fwd(*x):
        return core_scan_ref(*x, resets)

    if mode == "fwd":
        return torch.func.jvp(fwd, tuple(tensors[:6]), tuple(tensors[6:]))[1]

    def bwd(*xg):
        return torch.func.vjp(fwd, *xg[:6])[1](tuple(xg[6:]))

    primals, tangents = tensors[:8], tensors[8:]
    out = torch.func.jvp(bwd, tuple(primals), tuple(tangents))[1]
    if mode == "bwd+fwd":
        out = (*out, *torch.func.jvp(fwd, tuple(tensors[:6]), tuple(tensors[8:14]))[1])
    return out


def _note_third_order() -> None:
    _backend.log_once(
        "core-third-order",
        "ssm: a third derivative of the selective scan runs through the torch reference",
    )


@_fold_vmap
class _CoreJvp(Function):
    """Tangents only. ``("fwd", resets, x, ẋ) -> J(x) ẋ``,
    ``("bwd", resets, x, g, ẋ, ġ) -> d/dε J(x + εẋ)ᵀ (g + εġ)``, and ``"bwd+fwd"``: both
    (``J(x) ẋ`` appended; one kernel call)."""

    @staticmethod
    def forward(mode, resets, *tensors):
        ts = [t.contiguous() for t in tensors]
        if mode == "fwd":
            return tuple(_ext().core_scan_fwd_jvp(*ts[:6], _resets_arg(resets), *ts[6:]))
        return tuple(
            _ext().core_scan_bwd_jvp(*ts[:6], _resets_arg(resets), *ts[6:], mode == "bwd+fwd")
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mode = inputs[0]
        ctx.save_for_backward(inputs[1], *inputs[2:])
        ctx.save_for_forward(inputs[1], *inputs[2:])

    @staticmethod
    def backward(ctx, *g):
        # A third derivative: exact, through the pure-torch reference (slow; rarely needed).
        _note_third_order()
        resets, *tensors = ctx.saved_tensors
        _, vjp_fn = torch.func.vjp(lambda *ts: _jvp_ref(ctx.mode, resets, *ts), *tensors)
        return (None, None, *vjp_fn(g))  # grads are materialised: none is None

    @staticmethod
    def jvp(ctx, _mode, _resets, *tangents):
        # Forward mode through a second derivative (e.g. an HVP of a meta-objective): likewise.
        _note_third_order()
        resets, *tensors = ctx.saved_tensors
        tangents = _zeros_if_none(tangents, tensors)
        return torch.func.jvp(
            lambda *ts: _jvp_ref(ctx.mode, resets, *ts), tuple(tensors), tuple(tangents)
        )[1]


def core_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    Bt: Tensor,
    Ct: Tensor,
    h0: Tensor,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The fused recurrence ``(y (B, D, L), h_L (B, D, N))``; ``A`` may be ``(D, N)`` (shared)
    or ``(B, D, N)``. Needs the CPU extension (:func:`ssm.backend.cpu_ext`)."""
    _check(u, dt, A, Bt, Ct, h0, resets)
    if A.dim() == 2:
        A = A.expand(u.shape[0], *A.shape)
    if _backend.nested_forward_mode():  # autograd.Function jvp rules lose outer tangents there
        return core_scan_ref(u, dt, A, Bt, Ct, h0, resets)
    return _Core.apply(u, dt, A, Bt, Ct, h0, resets)


def _check(u, dt, A, Bt, Ct, h0, resets) -> None:
    if u.dim() != 3 or dt.shape != u.shape:
        raise ValueError(
            f"core_scan: u and dt must both be (B, D, L), got {tuple(u.shape)}, {tuple(dt.shape)}"
        )
    batch, dim, length = u.shape
    n = A.shape[-1]
    if A.shape not in ((dim, n), (batch, dim, n)):
        raise ValueError(
            f"core_scan: A must be (D, N) or (B, D, N) with D={dim}, got {tuple(A.shape)}"
        )
    for name, M in (("Bt", Bt), ("Ct", Ct)):
        if M.dim() != 4 or M.shape[0] != batch or M.shape[2:] != (length, n) or dim % M.shape[1]:
            raise ValueError(
                f"core_scan: {name} must be (B, G, L, N) = ({batch}, G, {length}, {n}) with G "
                f"dividing D={dim}, got {tuple(M.shape)}"
            )
    if Bt.shape != Ct.shape:
        raise ValueError(f"core_scan: Bt and Ct differ: {tuple(Bt.shape)} vs {tuple(Ct.shape)}")
    if h0.shape != (batch, dim, n):
        raise ValueError(f"core_scan: h0 must be {(batch, dim, n)}, got {tuple(h0.shape)}")
    if resets is not None and (resets.dtype != torch.bool or resets.shape != (batch, length)):
        raise ValueError(
            f"core_scan: resets must be None or bool {(batch, length)}, got "
            f"{resets.dtype} {tuple(resets.shape)}"
        )
    dtypes = {t.dtype for t in (u, dt, A, Bt, Ct, h0)}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
        raise ValueError(
            f"core_scan: inputs must share float32 or float64, got {sorted(map(str, dtypes))}"
        )
    if _backend.cpu_ext() is None:
        raise RuntimeError("core_scan needs the fused CPU extension (ssm.backend.cpu_ext())")
