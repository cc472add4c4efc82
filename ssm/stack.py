"""The pre-norm residual stack of sequence layers, written once::

    x ← x + layer_i(norm_i(x))        for i = 1..n

The stack is a pair of ``nn.ModuleList`` s (``layers``, ``norms``) owned by the network that
uses it, so its parameters keep the names ``layers.i`` and ``norms.i``; the functions here run
it in sequence mode (:func:`residual_forward`) and in step mode (:func:`residual_step`), with
the state a tuple of one layer state per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .base import zero_where
from .norm import LayerNorm
from .registry import make_layer

StackState = tuple[tuple[Tensor, ...], ...]


def make_stack(
    kind: str, d_model: int, n_layers: int, layer_kwargs: Mapping[str, Any] | None = None
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """``(layers, norms)``: ``n_layers`` layers of ``kind`` (:func:`ssm.make_layer`) and their
    pre-norms (:class:`ssm.norm.LayerNorm`), built in that order."""
    layers = nn.ModuleList(
        make_layer(kind, d_model, **dict(layer_kwargs or {})) for _ in range(n_layers)
    )
    norms = nn.ModuleList(LayerNorm(d_model) for _ in range(n_layers))
    return layers, norms


def stack_initial_state(
    layers: nn.ModuleList, batch_size: int, device=None, dtype=None
) -> StackState:
    return tuple(layer.initial_state(batch_size, device, dtype) for layer in layers)


def check_stack_state(state: Any, n_layers: int, what: str = "policy state") -> None:
    if state is not None and (not isinstance(state, (tuple, list)) or len(state) != n_layers):
        raise ValueError(f"{what} must be a tuple of {n_layers} layer states (see initial_state)")


def residual_forward(
    layers: nn.ModuleList,
    norms: nn.ModuleList,
    x: Tensor,
    state: StackState | None = None,
    resets: Tensor | None = None,
) -> tuple[Tensor, StackState]:
    """Sequence mode: ``x (B, L, d)`` -> ``(B, L, d)`` and the final state of each layer."""
    new_state = []
    for i, (layer, norm) in enumerate(zip(layers, norms)):
        y, s = layer(norm(x), None if state is None else state[i], resets)
        x = x + y
        new_state.append(s)
    return x, tuple(new_state)


def residual_step(
    layers: nn.ModuleList,
    norms: nn.ModuleList,
    x: Tensor,
    state: StackState | None,
    reset: Tensor | None = None,
) -> tuple[Tensor, StackState]:
    """Step mode: ``x (B, d)`` -> ``(B, d)``; rows where ``reset (B,)`` is True start from a
    zero state."""
    new_state = []
    for i, (layer, norm) in enumerate(zip(layers, norms)):
        s = None if state is None else zero_where(state[i], reset)
        y, s = layer.step(norm(x), s)
        x = x + y
        new_state.append(s)
    return x, tuple(new_state)
