"""Shared helpers for the ``ssm`` tests: small layers of every kind, random states and resets."""

from __future__ import annotations

import pytest
import torch

import ssm

# One intra-op thread: the layers here are tiny, and on a busy 2-core machine OpenMP threads that
# spin-wait for each other make every small op ~1000x slower (torch.gru_cell: 20 us -> 16 ms).
# The fused kernel's multi-threaded reductions are exercised explicitly in test_selective_scan.py.
torch.set_num_threads(1)

KINDS = sorted(ssm.KINDS)
D_MODEL = 6
D_STATE = 4
BATCH = 3


def layer_kwargs(kind: str, **overrides) -> dict:
    """Small but non-trivial configurations (S4D's chunk is smaller than L, so chunks are padded)."""
    kw: dict = {}
    if kind in ("s4d", "s5"):
        kw = {"d_state": D_STATE}
    elif kind == "mamba":
        kw = {"d_state": D_STATE, "d_conv": 3, "expand": 2}
    kw.update(overrides)
    return kw


def make(kind: str, d_model: int = D_MODEL, dtype=torch.float64, seed: int = 0, **overrides):
    """A layer of ``kind`` with deterministic, slightly perturbed parameters, in ``dtype``.

    The perturbation moves every parameter off its structured initialisation (Mamba's D = 1,
    S4D's identical A per channel, ...) so that mistakes cannot hide behind symmetric values.
    """
    torch.manual_seed(seed)
    layer = ssm.make_layer(kind, d_model, **layer_kwargs(kind, **overrides))
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return layer.to(dtype)


def random_state(layer, batch: int, dtype=torch.float64, scale: float = 0.5, seed: int = 1):
    """A random non-zero state of the right structure (complex where the layer's is complex)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in layer.initial_state(batch, dtype=dtype):
        if s.is_complex():
            re = torch.randn(s.shape, generator=g, dtype=dtype)
            im = torch.randn(s.shape, generator=g, dtype=dtype)
            out.append(scale * torch.complex(re, im))
        else:
            out.append(scale * torch.randn(s.shape, generator=g, dtype=dtype))
    return tuple(out)


def random_resets(batch: int, length: int, p: float = 0.15, seed: int = 2) -> torch.Tensor:
    """Random resets, including one at t=0 in row 0 and none at all in the last row."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(batch, length, generator=g) < p
    r[0, 0] = True
    if length > 3:
        r[0, length // 2] = True
    if batch > 1:
        r[-1] = False
    return r


def run_steps(layer, x, state=None, resets=None):
    """Step mode over a whole sequence: ``(y (B, L, D), final_state)``."""
    ys = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state, None if resets is None else resets[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state


def max_err(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max((max_err(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return (a - b).abs().max().item()


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param
