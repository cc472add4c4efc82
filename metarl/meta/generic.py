"""MAML on any torch module and any loss: the functional surface behind the MAML family.

learn2learn users write ``learner = maml.clone(); learner.adapt(loss)``. Here the same is one
function of a parameter dict (Finn et al., 2017)::

    θ      = dict(model.named_parameters())        # live: the outer loss reaches them
    φ_0    = θ
    φ_k+1  = φ_k − α ∇_φ L_support(φ_k)             # create_graph: second order, unless
                                                   # first_order (FOMAML: ∇ is a constant)
    L_outer = L_query(φ_K);  L_outer.backward()     # ∂L_outer/∂θ through the inner steps

``loss_fn(params) -> scalar`` computes the support loss with the module run on ``params``
(:func:`forward`, i.e. ``torch.func.functional_call``), so nothing is copied or monkeypatched and
the model's own parameters are never changed by adaptation.

The reinforcement-learning learners (:class:`metarl.meta.MAML` and the rest) need an
:class:`ssm.SequencePolicy`, because their losses re-run trajectories through it; this module is
for everything else (supervised few-shot, your own policy with your own surrogate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["adapt", "forward", "parameters"]

Params = dict[str, Tensor]


def parameters(module: nn.Module) -> Params:
    """The module's trainable parameters as a live dict (θ: gradients of anything computed from
    the adapted parameters reach them)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def forward(module: nn.Module, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` run on ``params`` instead of its own parameters (buffers and
    parameters not in ``params`` are the module's own)."""
    return functional_call(module, dict(params), args, kwargs, strict=False)


def adapt(
    module: nn.Module,
    loss_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor] | None = None,
    lr: float = 0.1,
    steps: int = 1,
    first_order: bool = False,
) -> Params:
    """``steps`` SGD steps ``φ ← φ − lr ∇ loss_fn(φ)`` from ``params`` (default: the module's
    live parameters, :func:`parameters`). Returns the adapted dict; differentiable in the start
    parameters to second order unless ``first_order``.

    ``loss_fn`` takes a parameter dict and returns a scalar, typically
    ``lambda p: F.mse_loss(forward(module, p, x_support), y_support)``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    phi = dict(parameters(module) if params is None else params)
    if not phi:
        raise ValueError("nothing to adapt: the module has no trainable parameters")
    for _ in range(steps):
        loss = loss_fn(phi)
        if not (isinstance(loss, Tensor) and loss.dim() == 0):
            raise ValueError(
                f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        names = [n for n, v in phi.items() if v.requires_grad]
        if not names:
            raise ValueError("loss_fn's parameters do not require grad")
        grads = torch.autograd.grad(
            loss, [phi[n] for n in names], create_graph=not first_order, allow_unused=True
        )
        for n, g in zip(names, grads):
            if g is not None:
                phi[n] = phi[n] - lr * (g.detach() if first_order else g)
    return phi
