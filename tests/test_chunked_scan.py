"""The chunked scan (``ssm.chunked_scan``) against plain per-step loops: values and gradients,
with resets (at t=0, consecutive, none) and initial states, lengths not divisible by the chunk;
and the selective scan's dispatch to it."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import BATCH, D_MODEL, make, max_err, random_resets, random_state
from torch.func import grad, vmap

from ssm import backend
from ssm.chunked_scan import chunked_linear_scan, default_chunk
from ssm.selective_scan import selective_scan, selective_scan_chunked, selective_scan_ref

# the module (``ssm.selective_scan`` is also the function's name)
ss = importlib.import_module("ssm.selective_scan")
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _loop(a, b, h0, resets):
    """``h_t = keep_t a_t h_{t-1} + b_t``, one step at a time (the oracle)."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(b.shape[1]):
        if resets is not None:
            h = h * (~resets[:, t]).to(b.dtype).view(-1, *([1] * (b.dim() - 2)))
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1), h


def _resets(batch, length, seed=0):
    """Random resets plus one at t=0 (row 0), a run of consecutive ones (row 1), none (last)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(batch, length, generator=g) < 0.2
    r[0, 0] = True
    r[1, 3:6] = True
    r[-1] = False
    return r


def _ab(dtype, batch=3, length=23, shape=(4, 2), seed=1, a_shape=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, length, *(a_shape or shape), generator=g, dtype=dtype) * 1.2 - 0.1
    b = torch.randn(batch, length, *shape, generator=g, dtype=dtype)
    h0 = torch.randn(batch, *shape, generator=g, dtype=dtype)
    return a, b, h0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk", [None, 1, 4, 5, 23, 64])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero"])
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_chunked_linear_scan_equals_loop(dtype, chunk, with_h0, with_resets):
    a, b, h0 = _ab(dtype)
    h0 = h0 if with_h0 else None
    resets = _resets(3, 23) if with_resets else None
    states, last = chunked_linear_scan(a, b, h0, resets, chunk)
    ref_states, ref_last = _loop(a, b, h0, resets)
    assert states.shape == b.shape and states.dtype == dtype
    assert max_err(states, ref_states) < TOL[dtype]
    assert max_err(last, ref_last) < TOL[dtype]


def test_chunked_linear_scan_broadcast_decay_and_zero_decays():
    """``a`` shared along the last axis; exact zeros in ``a`` (no log is taken)."""
    a, b, h0 = _ab(torch.float64, a_shape=(4, 1))
    a[:, 7] = 0.0
    states, last = chunked_linear_scan(a, b, h0, _resets(3, 23), chunk=6)
    ref_states, ref_last = _loop(a.expand_as(b), b, h0, _resets(3, 23))
    assert max_err(states, ref_states) < 1e-12 and max_err(last, ref_last) < 1e-12


def test_reset_drops_the_initial_state_and_the_past():
    a, b, h0 = _ab(torch.float64)
    resets = torch.zeros(3, 23, dtype=torch.bool)
    resets[:, 0] = True
    with_h0, _ = chunked_linear_scan(a, b, h0, resets, chunk=5)
    without, _ = chunked_linear_scan(a, b, None, None, chunk=5)
    assert max_err(with_h0, without) < 1e-14
    plain, _ = chunked_linear_scan(a, b, h0, None, chunk=5)
    assert max_err(plain, without) > 1e-3  # the initial state does matter without the reset


@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_chunked_linear_scan_gradcheck(with_resets):
    a, b, h0 = _ab(torch.float64, batch=2, length=7, shape=(2,))
    resets = _resets(2, 7) if with_resets else None
    ins = tuple(t.clone().requires_grad_() for t in (a, b, h0))
    assert torch.autograd.gradcheck(lambda *x: chunked_linear_scan(*x, resets, 3), ins)
    assert torch.autograd.gradgradcheck(lambda *x: chunked_linear_scan(*x, resets, 3), ins)


def test_chunked_linear_scan_bad_input():
    a, b, h0 = _ab(torch.float64)
    with pytest.raises(ValueError, match="one rank"):
        chunked_linear_scan(a[..., 0], b, h0)
    with pytest.raises(ValueError, match="h0 must be"):
        chunked_linear_scan(a, b, h0[:, :2])
    with pytest.raises(ValueError, match="resets must be bool"):
        chunked_linear_scan(a, b, h0, torch.zeros(3, 23))
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        chunked_linear_scan(a, b, h0, None, 0)


def test_default_chunk_is_ceil_sqrt():
    assert [default_chunk(n) for n in (1, 2, 4, 5, 16, 17, 1024)] == [1, 2, 2, 3, 4, 5, 32]


# -- the selective scan on it ---------------------------------------------------------------------
def _scan_inputs(dtype, b_kind="selective", L=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, dim, n = 3, 4, 5

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    A = -torch.rand(dim, n, generator=g, dtype=dtype) * 2
    if b_kind == "fixed":
        B, C = r(dim, n), r(dim, n)
    elif b_kind == "grouped":
        B, C = r(batch, 2, n, L), r(batch, 2, n, L)
    else:
        B, C = r(batch, n, L), r(batch, n, L)
    ins = [r(batch, dim, L), r(batch, dim, L), A, B, C, r(dim), r(batch, dim, L), r(dim)]
    return ins, r(batch, dim, n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("b_kind", ["selective", "grouped", "fixed"])
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "zero"])
def test_selective_scan_chunked_matches_reference_values_and_gradients(dtype, b_kind, with_state):
    ins, h0 = _scan_inputs(dtype, b_kind)
    resets = _resets(3, 29)
    kw = {"initial_state": h0 if with_state else None, "resets": resets}

    def run(fn, **extra):
        xs = [t.clone().requires_grad_() for t in ins]
        hs = kw["initial_state"]
        hs = None if hs is None else hs.clone().requires_grad_()
        out, last = fn(*xs, True, True, initial_state=hs, resets=resets, **extra)
        g = torch.Generator().manual_seed(9)
        loss = (out * torch.randn(out.shape, generator=g, dtype=dtype)).sum() + last.pow(2).sum()
        wrt = xs + ([hs] if hs is not None else [])
        return out.detach(), last.detach(), torch.autograd.grad(loss, wrt)

    o_r, h_r, g_r = run(selective_scan_ref)
    o_c, h_c, g_c = run(selective_scan_chunked, chunk=6)  # 29 = 4 x 6 + 5: the last is padded
    tol = 1e-11 if dtype == torch.float64 else 2e-4
    assert max_err(o_c, o_r) < tol and max_err(h_c, h_r) < tol
    for a, b in zip(g_c, g_r, strict=True):
        assert (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item())


def test_selective_scan_chunked_complex_A_matches_reference():
    ins, _ = _scan_inputs(torch.float64, "fixed")
    u, delta, A, _, _, D, z, bias = ins
    g = torch.Generator().manual_seed(3)
    Ac = torch.complex(A, torch.randn(A.shape, generator=g, dtype=torch.float64))
    Bc, Cc = (torch.randn(A.shape, generator=g, dtype=torch.complex128) for _ in range(2))
    args = (u, delta, Ac, Bc, Cc, D, z, bias, True, True)
    o_r, h_r = selective_scan_ref(*args, resets=_resets(3, 29))
    o_c, h_c = selective_scan_chunked(*args, resets=_resets(3, 29))
    assert max_err(o_c, o_r) < 1e-11 and max_err(h_c, h_r) < 1e-11


def test_selective_scan_chunked_under_vmap_and_second_order_grad():
    """torch.func: vmap over a batch of A's of grad of grad equals the reference's."""
    ins, h0 = _scan_inputs(torch.float64, L=11)
    u, delta, A, B, C, D, z, bias = ins
    resets = _resets(3, 11)

    def loss(fn, A_):
        out, last = fn(
            u, delta, A_, B, C, D, z, bias, True, True, initial_state=h0, resets=resets
        )
        return torch.tanh(out).pow(2).sum() + last.pow(2).sum()

    def second(fn):
        g1 = grad(lambda A_: loss(fn, A_))
        return vmap(grad(lambda A_: (g1(A_) ** 2).sum()))(torch.stack([A, 0.5 * A]))

    h_c, h_r = second(selective_scan_chunked), second(selective_scan_ref)
    assert max_err(h_c, h_r) < 1e-9 * max(1.0, h_r.abs().max().item())
    assert h_r.abs().max() > 1e-6


# -- dispatch -------------------------------------------------------------------------------------
@pytest.fixture
def chunked_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = ss.selective_scan_chunked

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ss, "selective_scan_chunked", spy)
    return calls


def test_backend_chunked_pins_the_chunked_scan_on_cpu(chunked_calls):
    ins, h0 = _scan_inputs(torch.float64)
    out = selective_scan(*ins, True, initial_state=h0, resets=_resets(3, 29), backend="chunked")
    assert chunked_calls == [1]
    ref = selective_scan_ref(*ins, True, initial_state=h0, resets=_resets(3, 29))
    assert max_err(out, ref) < 1e-11


def test_cpu_auto_dispatch_never_takes_the_chunked_scan(chunked_calls):
    """CPU numerics stay those of the fused kernels / the reference."""
    ins, h0 = _scan_inputs(torch.float64)
    selective_scan(*ins, True, initial_state=h0, resets=_resets(3, 29))
    selective_scan(*ins, True, initial_state=h0, resets=_resets(3, 29), backend="torch")
    assert chunked_calls == []
    assert not backend.use_chunked_scan(ins[0], backend="auto")
    assert backend.use_chunked_scan(ins[0], backend="chunked")


def test_cuda_route_sends_state_and_resets_to_the_chunked_scan(monkeypatch, chunked_calls):
    """The CUDA branch's routing, with CUDA simulated (no GPU here): a call carrying an initial
    state or resets goes to the chunked scan, never to mamba-ssm's kernel or the per-step loop."""
    monkeypatch.setattr(backend, "use_cpu_fused", lambda *a, **k: False)
    monkeypatch.setattr(backend, "use_cpu_core", lambda *a, **k: False)
    monkeypatch.setattr(backend, "use_cuda_fused", lambda *a, **k: True)
    monkeypatch.setattr(backend, "mamba_ssm_scan_fn", lambda: pytest.fail("kernel called"))
    monkeypatch.setattr(ss, "selective_scan_ref", lambda *a, **k: pytest.fail("loop called"))
    ins, h0 = _scan_inputs(torch.float64)
    selective_scan(*ins, True, initial_state=h0)
    selective_scan(*ins, True, resets=_resets(3, 29))
    assert chunked_calls == [1, 1]


def test_mamba_layer_with_chunked_backend_matches_auto():
    auto = make("mamba", backend="auto")
    chunked = make("mamba", backend="chunked")
    chunked.load_state_dict(auto.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 21, D_MODEL, generator=g, dtype=torch.float64)
    state, resets = random_state(auto, BATCH), random_resets(BATCH, 21)
    outs = []
    for layer in (auto, chunked):
        xr = x.clone().requires_grad_()
        y, s = layer(xr, state, resets)
        loss = y.pow(2).sum() + sum(t.sum() for t in s)
        outs.append((y, s, torch.autograd.grad(loss, [xr, *layer.parameters()])))
    (y_a, s_a, g_a), (y_c, s_c, g_c) = outs
    assert max_err(y_a, y_c) < 1e-10 and max_err(s_a, s_c) < 1e-10
    assert max_err(list(g_a), list(g_c)) < 1e-9
