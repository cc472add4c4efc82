"""A TRPO step on parameter dicts (Schulman, Levine, Moritz, Jordan & Abbeel, 2015, "Trust Region
Policy Optimization"), used as MAML's outer optimiser (MAML-TRPO, Finn et al., 2017).

With the loss ``L(θ)`` to decrease (the negated query surrogate after adaptation) and the mean
``KL(θ) = E[KL(π_old ‖ π_θ)]`` over the query states (both through the inner loop)::

    g = ∇L(θ_old),   F = ∇²KL(θ_old)  (the Fisher matrix; F v by Hessian-vector products)
    s = -(F + δI)⁻¹ g                   (conjugate gradient)
    β = sqrt(2 max_kl / sᵀ(F + δI)s)    (the largest step with ½ sᵀFs = max_kl)
    θ_new = θ_old + r^j β s             first j = 0, 1, ... with KL(θ_new) ≤ max_kl and
                                        L(θ_new) < L(θ_old); no such j: keep θ_old
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from . import functional as F
from .functional import Params


class TRPOResult(NamedTuple):
    params: Params
    """the new parameters (the old ones when the step was rejected)"""
    accepted: bool
    """whether the line search found a step within the KL bound that lowers the loss"""
    loss_before: float
    loss_after: float
    kl: float
    """KL(π_old ‖ π_new) at the accepted step (0 when rejected)"""
    step_fraction: float
    """r^j of the accepted step (0 when rejected)"""
    grad_norm: float


def hessian_vector_product_operator(
    fn: Callable[[Params], Tensor], params: Params
) -> Callable[[Params], Params]:
    """``v ↦ ∇²fn(params) v``, reusing one graph of ``∇fn`` for every product.

    The gradient is taken once with ``create_graph=True`` (ordinary autograd over whatever
    ``torch.func`` transforms ``fn`` uses inside); each product is then one backward pass of
    ``∇fn · v`` through that graph, instead of a fresh forward-over-reverse pass. CG calls it
    ``cg_steps + 1`` times per TRPO step, so this is where a MAML-TRPO step spends its time.
    """
    leaves = {k: t.detach().clone().requires_grad_() for k, t in params.items()}
    names, tensors = list(leaves), list(leaves.values())
    with torch.enable_grad():
        grads = torch.autograd.grad(fn(leaves), tensors, create_graph=True, allow_unused=True)
    used = [(n, g) for n, g in zip(names, grads) if g is not None and g.requires_grad]

    def product(v: Params) -> Params:
        if not used:
            return F.zeros_like(params)
        with torch.enable_grad():
            dot = sum((g * v[n]).sum() for n, g in used)
            hv = torch.autograd.grad(dot, tensors, retain_graph=True, allow_unused=True)
        return {n: torch.zeros_like(params[n]) if h is None else h for n, h in zip(names, hv)}

    return product


def trpo_step(
    params: Params,
    loss_fn: Callable[[Params], Tensor],
    kl_fn: Callable[[Params], Tensor],
    max_kl: float = 0.01,
    cg_steps: int = 10,
    damping: float = 1e-2,
    backtrack_ratio: float = 0.5,
    max_backtracks: int = 15,
    metric_fn: Callable[[Params], Tensor] | None = None,
) -> TRPOResult:
    """One constrained step; see the module docstring. ``loss_fn`` and ``kl_fn`` map a parameter
    dict to a scalar and must be differentiable by autograd (``kl_fn`` twice); they may use
    ``torch.func`` transforms inside.

    ``metric_fn`` (default ``kl_fn``) is the function whose Hessian gives ``F``; a cheaper
    approximation of the KL may be passed there, since the line search still checks the bound
    with ``kl_fn`` itself."""
    theta = F.detach(params)
    leaves = {k: t.clone().requires_grad_() for k, t in theta.items()}
    with torch.enable_grad():
        loss0 = loss_fn(leaves)
        grads = torch.autograd.grad(loss0, list(leaves.values()), allow_unused=True)
    g = {k: torch.zeros_like(t) if d is None else d for (k, t), d in zip(theta.items(), grads)}
    grad_norm = float(F.sq_norm(g).sqrt())
    loss_before = float(loss0.detach())

    hessian_vp = hessian_vector_product_operator(kl_fn if metric_fn is None else metric_fn, theta)

    def fvp(v: Params) -> Params:
        return F.add(hessian_vp(v), v, damping)

    step, _ = F.conjugate_gradient(fvp, {k: -v for k, v in g.items()}, cg_steps)
    shs = float(F.dot(step, fvp(step)))
    if not (grad_norm > 0 and shs > 0 and math.isfinite(shs)):
        return TRPOResult(theta, False, loss_before, loss_before, 0.0, 0.0, grad_norm)
    beta = math.sqrt(2 * max_kl / shs)
    with torch.no_grad():
        for j in range(max_backtracks):
            frac = backtrack_ratio**j
            candidate = F.add(theta, step, frac * beta)
            loss, kl = float(loss_fn(candidate)), float(kl_fn(candidate))
            if math.isfinite(loss) and kl <= max_kl and loss < loss_before:
                return TRPOResult(candidate, True, loss_before, loss, kl, frac, grad_norm)
    return TRPOResult(theta, False, loss_before, loss_before, 0.0, 0.0, grad_norm)
