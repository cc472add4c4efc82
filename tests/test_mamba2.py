"""Mamba-2 beyond the layer contract (which tests/test_layers.py runs for every kind, mamba2
included): the chunked SSD form against the per-step recurrence, chunk sizes, large decays,
bad configurations, and the plumbing of the (simulated) CUDA dispatch."""

from __future__ import annotations

import pytest
import torch
from conftest import BATCH, D_MODEL, make, max_err, random_resets, random_state

import ssm
from ssm import backend
from ssm.mamba2 import ssd_chunked, ssd_ref


def _inputs(dtype, batch=3, length=23, heads=2, p=3, n=4, seed=0, dt_scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    x = r(batch, length, heads, p)
    dt = torch.rand(batch, length, heads, generator=g, dtype=dtype) * dt_scale
    A = -torch.rand(heads, generator=g, dtype=dtype) * 4 - 0.5
    return x, dt, A, r(batch, length, n), r(batch, length, n), r(batch, heads, p, n)


def _resets(batch, length):
    """One at t=0 (row 0), a run of consecutive ones (row 1), none (last row)."""
    r = torch.rand(batch, length, generator=torch.Generator().manual_seed(7)) < 0.15
    r[0, 0] = True
    r[1, 4:7] = True
    r[-1] = False
    return r


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk", [1, 4, 5, 23, 64])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero"])
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_ssd_chunked_equals_recurrence(dtype, chunk, with_h0, with_resets):
    x, dt, A, B, C, h0 = _inputs(dtype)
    h0 = h0 if with_h0 else None
    resets = _resets(3, 23) if with_resets else None
    y_c, h_c = ssd_chunked(x, dt, A, B, C, h0, resets, chunk)
    y_r, h_r = ssd_ref(x, dt, A, B, C, h0, resets)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert y_c.shape == x.shape and y_c.dtype == dtype
    assert max_err(y_c, y_r) < tol and max_err(h_c, h_r) < tol


@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_ssd_chunked_gradients_equal_recurrence(with_resets):
    ins = _inputs(torch.float64, length=19)
    resets = _resets(3, 19) if with_resets else None
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 19, 2, 3, generator=g, dtype=torch.float64)

    def grads(fn, *extra):
        xs = [t.clone().requires_grad_() for t in ins]
        y, h = fn(*xs, resets, *extra)
        return torch.autograd.grad((y * w).sum() + h.pow(2).sum(), xs)

    for a, b in zip(grads(ssd_chunked, 6), grads(ssd_ref), strict=True):
        assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())


def test_ssd_chunked_gradcheck_and_gradgradcheck():
    x, dt, A, B, C, h0 = _inputs(torch.float64, batch=2, length=7, heads=2, p=2, n=2)
    resets = torch.tensor([[False, False, True, False, False, True, True], [True] + [False] * 6])
    ins = tuple(t.clone().requires_grad_() for t in (x, dt, A, B, C, h0))

    def f(*a):
        return ssd_chunked(*a, resets, 3)

    assert torch.autograd.gradcheck(f, ins)
    assert torch.autograd.gradgradcheck(f, ins)


def test_ssd_chunked_large_decays_stay_finite_and_exact():
    """Δ·A down to about -400 per step: every exponent of the chunked form is <= 0."""
    x, dt, A, B, C, h0 = _inputs(torch.float32, dt_scale=80.0)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, h0)]
    y_c, h_c = ssd_chunked(*leaves, _resets(3, 23), 8)
    y_r, h_r = ssd_ref(x, dt, A, B, C, h0, _resets(3, 23))
    assert max_err(y_c, y_r) < 1e-4 and max_err(h_c, h_r) < 1e-4
    grads = torch.autograd.grad(y_c.sum() + h_c.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_layer_outputs_do_not_depend_on_chunk_size(chunk_size):
    base = make("mamba2")
    other = make("mamba2", chunk_size=chunk_size)
    other.load_state_dict(base.state_dict())
    x = torch.randn(BATCH, 29, D_MODEL, dtype=torch.float64)
    state, resets = random_state(base, BATCH), random_resets(BATCH, 29)
    with torch.no_grad():
        y0, s0 = base(x, state, resets)
        y1, s1 = other(x, state, resets)
    assert max_err(y0, y1) < 1e-10 and max_err(s0, s1) < 1e-10


def test_layer_shapes_and_auto_headdim():
    layer = ssm.make_layer("mamba2", 64)
    assert (layer.d_inner, layer.headdim, layer.nheads) == (128, 64, 2)
    assert ssm.make_layer("mamba2", 3, d_state=2).headdim == 6
    assert [s for s, _ in layer.state_shapes(5)] == [(5, 128 + 2 * 64, 4), (5, 2, 64, 64)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"headdim": 5}, "headdim must be 'auto' or a positive int dividing"),
        ({"headdim": "big"}, "headdim must be"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"d_state": 0}, "d_state must be a positive int"),
        ({"backend": "gpu"}, "backend must be one of"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssm.make_layer("mamba2", 6, **kwargs)


def test_policy_spec_accepts_mamba2_and_builds_a_policy():
    import gymnasium as gym

    spec = ssm.PolicySpec.from_spaces(
        gym.spaces.Box(-1.0, 1.0, (3,)),
        gym.spaces.Discrete(2),
        kind="mamba2",
        d_model=16,
        n_layers=1,
        layer_kwargs={"d_state": 8, "chunk_size": 16},
    )
    assert ssm.PolicySpec.from_json(spec.to_json()) == spec
    policy = ssm.SequencePolicy.from_spec(spec)
    assert isinstance(policy.layers[0], ssm.KINDS["mamba2"])
    assert policy.layers[0].d_state == 8


# -- the CUDA dispatch's plumbing, with the kernel simulated on CPU -----------------------------
def _fake_chunk_scan(
    x, dt, A, B, C, chunk_size, initial_states=None, seq_idx=None, return_final_states=False
):
    """What mamba-ssm's ``mamba_chunk_scan_combined`` computes for one group and no D/z/dt_bias:
    the state stops where ``seq_idx`` changes (the initial state belongs to seq_idx 0)."""
    assert B.dim() == 4 and B.shape[2] == 1 and isinstance(chunk_size, int)
    assert seq_idx is None or seq_idx.dtype == torch.int32
    resets = None
    if seq_idx is not None:
        prev = torch.cat([torch.zeros_like(seq_idx[:, :1]), seq_idx[:, :-1]], dim=1)
        resets = seq_idx != prev
    y, h = ssd_ref(x, dt, A.to(x.dtype), B[:, :, 0], C[:, :, 0], initial_states, resets)
    return y, h.float()


def test_cuda_ssd_dispatch_plumbing(monkeypatch):
    layer = make("mamba2", dtype=torch.float32)
    x = torch.randn(BATCH, 21, D_MODEL)
    state, resets = random_state(layer, BATCH, dtype=torch.float32), random_resets(BATCH, 21)
    y_ref, s_ref = layer(x, state, resets)
    calls = []

    def fake(*a, **k):
        calls.append(1)
        return _fake_chunk_scan(*a, **k)

    monkeypatch.setattr(backend, "use_cuda_ssd", lambda *a, **k: True)
    monkeypatch.setattr(backend, "mamba_ssm_chunk_scan_fn", lambda: fake)
    xr = x.clone().requires_grad_()
    y, s = layer(xr, state, resets)
    assert calls == [1]
    assert max_err(y, y_ref) < 1e-5 and max_err(s, s_ref) < 1e-5
    y.sum().backward()  # first order: through the (fake) kernel's own graph
    assert torch.isfinite(xr.grad).all() and calls == [1]
