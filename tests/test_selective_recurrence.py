"""The twice-differentiable fused scan (ssm.selective_recurrence): values, first, second and
third derivatives, forward mode and vmap against the pure-torch reference, and its use inside
torch.func."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, jvp, vmap

import ssm
from ssm.selective_recurrence import core_scan, core_scan_ref

F64 = torch.float64


def inputs(batch=2, dim=4, length=6, n=3, groups=2, seed=0, lead=(), dtype=F64):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*lead, *shape, generator=g, dtype=dtype)

    u = rnd(batch, dim, length)
    dt = 0.05 + 0.5 * torch.rand(*lead, batch, dim, length, generator=g, dtype=dtype)
    A = -0.5 - torch.rand(*lead, dim, n, generator=g, dtype=dtype)
    return [
        u,
        dt,
        A,
        rnd(batch, groups, length, n),
        rnd(batch, groups, length, n),
        rnd(batch, dim, n),
    ]


def resets_for(batch=2, length=6, lead=(), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*lead, batch, length, generator=g) < 0.3


def ref(u, dt, A, Bt, Ct, h0, resets):
    if A.dim() == 2:
        A = A.expand(u.shape[0], *A.shape)
    return core_scan_ref(u, dt, A, Bt, Ct, h0, resets)


@pytest.fixture
def fused(kernel_calls):
    return kernel_calls


@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_values_and_derivatives_to_third_order(fused, with_resets, groups):
    x = [t.requires_grad_(True) for t in inputs(groups=groups)]
    r = resets_for() if with_resets else None
    y, h = core_scan(*x, r)
    y_r, h_r = ref(*x, r)
    assert (y - y_r).abs().max() < 1e-12 and (h - h_r).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda *a: core_scan(*a, r), x)
    assert torch.autograd.gradgradcheck(lambda *a: core_scan(*a, r), x)
    assert torch.autograd.gradcheck(
        lambda *a: core_scan(*a, r),
        x,
        check_forward_ad=True,
        check_backward_ad=False,
        check_undefined_grad=False,
        check_batched_grad=False,
    )

    def grad_norm(*a):  # second order inside: gradgradcheck of it reaches the fourth
        yy, hh = core_scan(*a, r)
        gs = torch.autograd.grad(yy.sin().sum() + hh.pow(3).sum(), a, create_graph=True)
        return sum(g.square().sum() for g in gs)

    assert torch.autograd.gradgradcheck(grad_norm, x, fast_mode=True)
    assert {"core_scan_fwd", "core_scan_bwd"} <= set(fused)


def _loss(scan):
    def f(params, data, r, w):
        (A,) = params
        u, dt, _, Bt, Ct, h0 = data
        y, h = scan(torch.tanh(u * A.sum()), dt, A, Bt, Ct, h0, r)
        return (torch.sin(y) * w).sum() + h.square().sum()

    return f


def test_maml_meta_gradient_and_hvp_under_vmap_match_reference(fused):
    tasks = 3
    data = inputs(lead=(tasks,), seed=3)
    r = resets_for(lead=(tasks,))
    w = torch.randn(tasks, 2, 4, 6, dtype=F64)
    params = (data[2],)
    v = (torch.randn_like(data[2]),)
    out = {}
    for name, scan in (("fused", core_scan), ("ref", ref)):
        f = _loss(scan)

        def meta(p, d, rr, ww, f=f):
            g = grad(f)(p, d, rr, ww)
            return f(tuple(pi - 0.1 * gi for pi, gi in zip(p, g)), d, rr, ww)

        def hvp(p, d, rr, ww, vv, f=f):
            return jvp(lambda q: grad(f)(q, d, rr, ww), (p,), (vv,))[1]

        out[name] = (vmap(grad(meta))(params, data, r, w)[0], vmap(hvp)(params, data, r, w, v)[0])
        if name == "fused":
            assert "core_scan_bwd" in fused
            n_calls = len(fused)
    assert len(fused) == n_calls  # the reference made no kernel calls
    for a, b in zip(out["fused"], out["ref"]):
        assert (a - b).abs().max() < 1e-10 * max(1.0, b.abs().max().item())
    # vmap folds tasks into the kernel's batch: the same as a loop over tasks
    f = _loss(core_scan)
    loop = torch.stack(
        [
            grad(f)(params_i, [t[i] for t in data], r[i], w[i])[0]
            for i, params_i in enumerate(zip(data[2]))
        ]
    )
    assert (vmap(grad(f))(params, data, r, w)[0] - loop).abs().max() < 1e-12


def test_selective_scan_uses_the_fused_core_inside_torch_func(fused):
    x = inputs(groups=1, seed=5)
    u, dt, A, Bt, Ct, h0 = x
    B, C = Bt[:, 0].transpose(-1, -2), Ct[:, 0].transpose(-1, -2)  # (B, N, L)
    D, z, bias = torch.randn(4, dtype=F64), torch.randn_like(u), torch.randn(4, dtype=F64)

    def f(A, backend):
        y = ssm.selective_scan(u, dt, A, B, C, D, z, bias, True, initial_state=h0, backend=backend)
        return y.sin().sum()

    hess = {b: torch.func.hessian(lambda a, b=b: f(a, b))(A) for b in ("torch", "auto")}
    assert "core_scan_bwd" in fused
    assert (hess["auto"] - hess["torch"]).abs().max() < 1e-10


def test_bad_shapes_are_refused_with_what_was_expected():
    x = inputs()
    with pytest.raises(ValueError, match=r"h0 must be \(2, 4, 3\)"):
        core_scan(*x[:5], x[5][:, :2])
    with pytest.raises(ValueError, match="Bt must be"):
        core_scan(x[0], x[1], x[2], x[3][..., :2], x[4], x[5])
    with pytest.raises(ValueError, match="resets must be None or bool"):
        core_scan(*x, torch.zeros(2, 6))


@pytest.mark.parametrize("mode", ["fwd", "bwd", "bwd+fwd"])
def test_jvp_kernels_match_the_reference_jvps(fused, mode):
    from ssm.selective_recurrence import _CoreJvp, _jvp_ref

    x = inputs(groups=2, seed=7)
    x[2] = x[2].expand(2, *x[2].shape).contiguous()  # A per sequence, as the kernels take it
    r = resets_for()
    g = torch.Generator().manual_seed(9)

    def like(t):
        return torch.randn(t.shape, generator=g, dtype=F64)

    grads = [] if mode == "fwd" else [like(x[0]), like(x[5])]
    tangents = [like(t) for t in (*x, *grads)]
    got = _CoreJvp.apply(mode, r, *x, *grads, *tangents)
    want = _jvp_ref(mode, r, *x, *grads, *tangents)
    assert len(got) == len(want) == {"fwd": 2, "bwd": 6, "bwd+fwd": 8}[mode]
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-12 * max(1.0, b.abs().max().item())
    assert {"fwd": "core_scan_fwd_jvp"}.get(mode, "core_scan_bwd_jvp") in fused


def test_forward_mode_through_a_meta_objective_matches_reference(fused):
    """jvp(grad(meta)) with meta = loss after an inner gradient step: forward mode through the
    scan's double backward, where the JVP rules nest jvp levels (the reference steps in there)."""
    data = inputs(seed=4)
    r = resets_for()
    w = torch.randn(2, 4, 6, dtype=F64)
    p, v = (data[2],), (torch.randn_like(data[2]),)
    out = {}
    for name, scan in (("fused", core_scan), ("ref", ref)):
        f = _loss(scan)

        def meta(q, f=f):
            g = grad(f)(q, data, r, w)
            return f(tuple(qi - 0.1 * gi for qi, gi in zip(q, g)), data, r, w)

        out[name] = jvp(grad(meta), (p,), (v,))[1][0]
    assert "core_scan_bwd" in fused
    assert out["ref"].abs().max() > 1e-3
    assert (out["fused"] - out["ref"]).abs().max() < 1e-10 * out["ref"].abs().max()
    # forward over forward: the second directional derivative of the scan's outputs
    x = inputs(seed=6)
    t1, t2 = [torch.randn_like(t) for t in x], [torch.randn_like(t) for t in x]

    def second(scan):
        first = lambda *a: jvp(lambda *b: scan(*b, r), tuple(a), tuple(t1))[1]  # noqa: E731
        return jvp(first, tuple(x), tuple(t2))[1]

    for a, b in zip(second(core_scan), second(ref)):
        assert b.abs().max() > 1e-6
        assert (a - b).abs().max() < 1e-10 * max(1.0, b.abs().max().item())
