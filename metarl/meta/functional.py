"""The functional core: parameter-dict arithmetic, inner SGD steps, task mapping, conjugate
gradient and the iMAML implicit gradient. Nothing here knows about policies or trajectories;
losses are plain callables ``params -> scalar``, so the pieces are tested on quadratics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch.func import grad, grad_and_value, jvp, vmap

Params = dict[str, Tensor]
LearningRates = float | Params
"""A fixed inner learning rate, or learned ones: ``name -> (K,)`` per layer and step (LSLR) or
``name -> (K, *shape)`` per element and step (Meta-SGD)."""

log = logging.getLogger("metarl.meta")


# -- parameter dicts ------------------------------------------------------------------------------
def detach(p: Params) -> Params:
    return {k: v.detach() for k, v in p.items()}


def add(a: Params, b: Params, scale: float | Tensor = 1.0) -> Params:
    """``a + scale · b``."""
    return {k: a[k] + scale * b[k] for k in a}


def sub(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def sq_norm(a: Params) -> Tensor:
    return dot(a, a)


def zeros_like(p: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in p.items()}


def step_lr(lrs: LearningRates, name: str, step: int) -> float | Tensor:
    """The inner learning rate of parameter ``name`` at inner step ``step`` (steps beyond the
    learned ones reuse the last)."""
    if isinstance(lrs, float | int):
        return float(lrs)
    table = lrs[name]
    return table[min(step, table.shape[0] - 1)]


def sgd_step(params: Params, grads: Params, lrs: LearningRates, step: int) -> Params:
    """``φ ← φ - α_{name, step} ⊙ g``."""
    return {k: params[k] - step_lr(lrs, k, step) * grads[k] for k in params}


def gradient_step(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    lrs: LearningRates,
    step: int,
    first_order: bool = False,
) -> tuple[Params, Tensor]:
    """One inner step ``φ - α ∇loss(φ)``; returns ``(new params, loss(φ))``. With
    ``first_order`` the gradient is a constant to any enclosing differentiation
    (``stop_gradient``), which is what FOMAML and Reptile use."""
    g, loss = grad_and_value(loss_fn)(params)
    if first_order:
        g = detach(g)
    return sgd_step(params, g, lrs, step), loss


# -- mapping over tasks ---------------------------------------------------------------------------
def map_tasks(
    fn: Callable[..., Any],
    args: Sequence[Any],
    in_dims: Sequence[int | None],
    vectorize: bool,
    chunk: int | None = None,
) -> Any:
    """``fn`` applied per task, outputs stacked over a leading task axis.

    ``vectorize``: ``torch.func.vmap`` over the task axis of the arguments whose ``in_dims`` is 0
    (the others, e.g. the shared initial parameters, are broadcast), ``chunk`` tasks per vmapped
    call (None: all at once). Otherwise a Python loop that computes the same values; it is the
    reference the vmap path is tested against.
    """
    if vectorize:
        return vmap(fn, in_dims=tuple(in_dims), chunk_size=chunk)(*args)
    mapped = [a for a, d in zip(args, in_dims) if d is not None]
    n = pytree.tree_leaves(mapped[0])[0].shape[0]
    outs = []
    for i in range(n):
        call = [a if d is None else _index(a, i) for a, d in zip(args, in_dims)]
        outs.append(fn(*call))
    return pytree.tree_map(lambda *xs: torch.stack(xs), *outs)


def _index(tree: Any, i: int) -> Any:
    return pytree.tree_map(lambda x: x[i], tree)


# -- curvature ------------------------------------------------------------------------------------
def hvp(loss_fn: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
    """Hessian-vector product ``∇²loss(params) v``, forward-over-reverse."""
    return jvp(grad(loss_fn), (params,), (v,))[1]


def conjugate_gradient(
    matvec: Callable[[Params], Params], b: Params, steps: int
) -> tuple[Params, Tensor]:
    """``steps`` iterations of conjugate gradient on ``A x = b`` (A symmetric positive definite,
    given by ``matvec``), from ``x = 0``. Returns ``(x, ‖b - A x‖²)``.

    A fixed number of iterations and no data-dependent branches, so that it runs under ``vmap``;
    once the residual is exactly zero the updates become no-ops instead of dividing by zero.
    """
    x = zeros_like(b)
    r = dict(b)
    p = dict(b)
    rs = sq_norm(r)
    for _ in range(steps):
        ap = matvec(p)
        pap = dot(p, ap)
        alpha = torch.where(pap != 0, rs / torch.where(pap != 0, pap, 1.0), 0.0)
        x = add(x, p, alpha)
        r = add(r, ap, -alpha)
        rs_new = sq_norm(r)
        beta = torch.where(rs != 0, rs_new / torch.where(rs != 0, rs, 1.0), 0.0)
        p = add(r, p, beta)
        rs = rs_new
    return x, rs


def proximal_solve(
    inner_fn: Callable[[Params], Tensor],
    anchor: Params,
    lam: float,
    lr: float,
    steps: int,
) -> Params:
    """Approximately ``argmin_φ inner_fn(φ) + λ/2 ‖φ - anchor‖²`` by ``steps`` steps of gradient
    descent from ``anchor`` (no graph is kept: iMAML never differentiates through the solve)."""
    anchor = detach(anchor)

    def regularised(phi: Params) -> Tensor:
        return inner_fn(phi) + 0.5 * lam * sq_norm(sub(phi, anchor))

    phi = anchor
    for k in range(steps):
        phi = detach(gradient_step(regularised, phi, lr, k, first_order=True)[0])
    return phi


def implicit_meta_gradient(
    inner_fn: Callable[[Params], Tensor],
    outer_fn: Callable[[Params], Tensor],
    adapted: Params,
    lam: float,
    cg_steps: int,
    damping: float = 0.0,
) -> tuple[Params, Tensor]:
    """The iMAML meta-gradient (Rajeswaran, Finn, Kakade & Levine, 2019, "Meta-Learning with
    Implicit Gradients").

    If ``φ*(θ) = argmin_φ L_in(φ) + λ/2 ‖φ - θ‖²``, stationarity ``∇L_in(φ*) + λ(φ* - θ) = 0``
    gives ``dφ*/dθ = (I + ∇²L_in(φ*)/λ)⁻¹``, hence::

        d L_out(φ*(θ)) / dθ = (I + ∇²L_in(φ*)/λ)⁻¹ ∇L_out(φ*)

    solved with ``cg_steps`` of conjugate gradient on Hessian-vector products, with the matrix
    damped to ``(1 + damping) I + ∇²L_in/λ`` (RL Hessians are not always positive definite).
    ``adapted`` is the (approximate) inner solution φ*. Returns ``(gradient, CG residual²)``.
    """
    phi = detach(adapted)
    g_out = detach(grad(outer_fn)(phi))

    def matvec(v: Params) -> Params:
        hv = hvp(inner_fn, phi, v)
        return {k: (1.0 + damping) * v[k] + hv[k] / lam for k in v}

    x, residual = conjugate_gradient(matvec, g_out, cg_steps)
    return detach(x), residual.detach()
