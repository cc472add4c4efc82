"""``LayerNorm`` written in elementary ops, so its derivatives of every order are exact under every
``torch.func`` composition (the policy's norms; no monkeypatching needed).

    y = (x - mean(x)) · rsqrt(var(x) + eps) · weight + bias        (biased variance, as torch)

``torch.nn.LayerNorm`` runs the fused ``native_layer_norm``, whose derivative formulas are wrong
in two places that meta-learning reaches (checked on torch 2.13, float64, against finite
differences and a Python loop; compare pytorch/pytorch#176234 and pytorch/functorch#534):

* second-order gradients *under vmap* (the meta-gradient of a vmapped inner loop): the
  gradient w.r.t. parameters before the norm is off by O(1) relative error;
* third-order gradients (the TRPO Fisher-vector product through the inner loop): the saved
  mean/rstd carry no history, so the derivative through the double backward is wrong.

Both fail silently. The composite form below is plain autograd at every order. It subclasses
``nn.LayerNorm``, so parameter names (``weight``, ``bias``), initial values and state dicts are
unchanged.

Where no derivative can be taken (grad mode off, no ``torch.func`` transform, no forward-AD level:
acting in a rollout), the fused kernel computes the same values faster (a policy ``step`` at B=16
is ~25% faster on CPU, ``experiments/bench_layer_norm.py``), so :class:`LayerNorm` uses it there.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn.functional as F
from torch import Tensor, nn

_peek_transform = getattr(torch._C._functorch, "peek_interpreter_stack", None)


def values_only() -> bool:
    """True where no derivative of any order can be taken of what is computed now: grad mode is
    off and no ``torch.func`` transform or forward-AD level is active. (Unsure -> False.)"""
    return (
        not torch.is_grad_enabled()
        and _peek_transform is not None
        and _peek_transform() is None
        and getattr(_forward_ad, "_current_level", 0) < 0
    )


def composite_layer_norm(
    x: Tensor, normalized_shape, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the trailing ``normalized_shape``
    dimensions (biased variance, as ``F.layer_norm``)."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=dims, keepdim=True)
    y = centred * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed by :func:`composite_layer_norm` (same values to rounding), or by
    the fused kernel where only values are needed (:func:`values_only`)."""

    def forward(self, x: Tensor) -> Tensor:
        if values_only():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return composite_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
