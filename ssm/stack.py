"""The residual stack of sequence layers, written once. The LayerNorm placement is an option
(``placement``; a plasticity lever, Lyle et al. 2023)::

    pre   x ← x + layer_i(norm_i(x))        for i = 1..n   (the default)
    post  x ← norm_i(x + layer_i(x))
    none  x ← x + layer_i(x)                (the norms are identities)

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
PLACEMENTS = ("pre", "post", "none")


def make_stack(
    kind: str,
    d_model: int,
    n_layers: int,
    layer_kwargs: Mapping[str, Any] | None = None,
    placement: str = "pre",
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """``(layers, norms)``: ``n_layers`` layers of ``kind`` (:func:`ssm.make_layer`) and their
    norms (:class:`ssm.norm.LayerNorm`; identities for ``placement="none"``), built in that
    order."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    layers = nn.ModuleList(
        make_layer(kind, d_model, **dict(layer_kwargs or {})) for _ in range(n_layers)
    )
    norm = nn.Identity if placement == "none" else LayerNorm
    norms = nn.ModuleList(norm(d_model) for _ in range(n_layers))
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
    placement: str = "pre",
) -> tuple[Tensor, StackState]:
    """Sequence mode: ``x (B, L, d)`` -> ``(B, L, d)`` and the final state of each layer."""
    new_state = []
    post = placement == "post"
    for i, (layer, norm) in enumerate(zip(layers, norms)):
        y, s = layer(x if post else norm(x), None if state is None else state[i], resets)
        x = norm(x + y) if post else x + y
        new_state.append(s)
    return x, tuple(new_state)


def residual_step(
    layers: nn.ModuleList,
    norms: nn.ModuleList,
    x: Tensor,
    state: StackState | None,
    reset: Tensor | None = None,
    placement: str = "pre",
) -> tuple[Tensor, StackState]:
    """Step mode: ``x (B, d)`` -> ``(B, d)``; rows where ``reset (B,)`` is True start from a
    zero state."""
    new_state = []
    post = placement == "post"
    for i, (layer, norm) in enumerate(zip(layers, norms)):
        s = None if state is None else zero_where(state[i], reset)
        y, s = layer.step(x if post else norm(x), s)
        x = norm(x + y) if post else x + y
        new_state.append(s)
    return x, tuple(new_state)
