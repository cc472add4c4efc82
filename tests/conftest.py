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
    """Small but non-trivial configurations (S4D's chunk < L, so its chunks get padded)."""
    kw: dict = {}
    if kind in ("s4d", "s5"):
        kw = {"d_state": D_STATE}
    elif kind == "mamba":
        kw = {"d_state": D_STATE, "d_conv": 3, "expand": 2}
    elif kind == "mamba2":  # 4 heads of 3; chunks of 8, so L=37 spans 5 (the last one padded)
        kw = {"d_state": D_STATE, "d_conv": 3, "expand": 2, "headdim": 3, "chunk_size": 8}
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


def pytest_configure(config):
    # torch.func's jvp loads decompositions that call the deprecated torch.jit.script (torch's
    # own warning, nothing to do with ssm).
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
    )


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


class _KernelSpy:
    """Wraps the compiled extension and records which of its functions were called."""

    def __init__(self, ext):
        self._ext = ext
        self.calls: list[str] = []

    def __getattr__(self, name):
        fn = getattr(self._ext, name)

        def wrapped(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)

        return wrapped


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    """The names of fused CPU kernel functions called during the test (in order).

    Skips where the kernels are disabled (SSM_DISABLE_CPU_KERNELS=1); fails where they are
    enabled but could not be built, since every fused-vs-reference comparison would then compare
    the reference with itself.
    """
    from ssm import backend

    if not backend.cpu_kernels_enabled():
        pytest.skip("fused CPU kernels disabled by SSM_DISABLE_CPU_KERNELS")
    ext = backend.cpu_ext()
    assert ext is not None, "the fused CPU kernels are enabled but failed to build (see log)"
    spy = _KernelSpy(ext)
    monkeypatch.setattr(backend, "cpu_ext", lambda: spy)
    return spy.calls
