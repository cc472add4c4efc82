"""The selective scan: against an independent loop written here, fused kernel against the torch
reference (values, gradients, double backward), and ``diagonal_linear_scan``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import ssm

BATCH, DIM, N, L = 2, 4, 3, 11
GROUPS = 2


# -- an independent reference ----------------------------------------------------------------------
def loop_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    resets=None,
):
    """Scalar-by-scalar loop over (b, d, t), straight from the equations:

    Δ = softplus(δ + bias);  h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t;  y_t = C_t·h_t + D u_t;
    out_t = y_t · z_t σ(z_t);  h_{t-1} := 0 where resets[b, t].
    """
    batch, dim, length = u.shape
    n = A.shape[1]

    def coef(M, b, d, t):
        if M.dim() == 2:  # (D, N)
            return M[d]
        if M.dim() == 3:  # (B, N, L)
            return M[b, :, t]
        groups = M.shape[1]  # (B, G, N, L): channel d belongs to group d // (D / G)
        return M[b, d // (dim // groups), :, t]

    out = torch.zeros(batch, dim, length, dtype=u.dtype)
    last = torch.zeros(batch, dim, n, dtype=u.dtype)
    for b in range(batch):
        for d in range(dim):
            h = torch.zeros(n, dtype=u.dtype)
            if initial_state is not None:
                h = initial_state[b, d].clone()
            for t in range(length):
                dt = delta[b, d, t]
                if delta_bias is not None:
                    dt = dt + delta_bias[d]
                if delta_softplus:
                    dt = torch.log1p(torch.exp(dt))
                if resets is not None and resets[b, t]:
                    h = torch.zeros_like(h)
                h = torch.exp(dt * A[d]) * h + dt * coef(B, b, d, t) * u[b, d, t]
                y = (h * coef(C, b, d, t)).sum()
                if D is not None:
                    y = y + D[d] * u[b, d, t]
                if z is not None:
                    y = y * z[b, d, t] * torch.sigmoid(z[b, d, t])
                out[b, d, t] = y
            last[b, d] = h
    return out, last


def make_inputs(
    bc="selective", dtype=torch.float64, batch=BATCH, dim=DIM, length=L, seed=0, softplus=True
):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    shapes = {
        "fixed": (dim, N),
        "selective": (batch, N, length),
        "grouped": (batch, GROUPS, N, length),
    }
    delta = (
        0.5 * rnd(batch, dim, length)
        if softplus
        else 0.05 + 0.5 * torch.rand(batch, dim, length, generator=g, dtype=dtype)
    )
    return dict(
        u=rnd(batch, dim, length),
        delta=delta,
        A=-torch.exp(0.5 * rnd(dim, N)),
        B=rnd(*shapes[bc]),
        C=rnd(*shapes[bc]),
        D=rnd(dim),
        z=rnd(batch, dim, length),
        delta_bias=0.3 * rnd(dim),
        initial_state=rnd(batch, dim, N),
        resets=torch.rand(batch, length, generator=g) < 0.25,
    )


def _call(fn, inp, options, **kw):
    args = [inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"]]
    keys = ("D", "z", "delta_bias", "initial_state", "resets")
    kwargs = {k: inp[k] for k in options if k in keys}
    if "delta_bias" in options:
        kwargs["delta_softplus"] = True
    return fn(*args, **kwargs, **kw)


OPTIONS = {
    "plain": (),
    "D_z": ("D", "z"),
    "bias_softplus": ("delta_bias",),
    "everything": ("D", "z", "delta_bias", "initial_state", "resets"),
    "state_resets": ("initial_state", "resets"),
}


# -- 7a. against the loop --------------------------------------------------------------------------
@pytest.mark.parametrize("bc", ["fixed", "selective", "grouped"])
@pytest.mark.parametrize("options", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize(
    "impl",
    ["auto", "torch", "ref"],
)
def test_selective_scan_matches_independent_loop(bc, options, impl):
    opts = OPTIONS[options]
    inp = make_inputs(bc, softplus="delta_bias" in opts)
    want_y, want_h = loop_scan(
        inp["u"],
        inp["delta"],
        inp["A"],
        inp["B"],
        inp["C"],
        **{k: inp[k] for k in opts},
        delta_softplus="delta_bias" in opts,
    )
    fn = ssm.selective_scan_ref if impl == "ref" else ssm.selective_scan
    kw = {} if impl == "ref" else {"backend": impl}
    y = _call(fn, inp, opts, **kw)
    y2, h = _call(fn, inp, opts, return_last_state=True, **kw)
    assert y.shape == (BATCH, DIM, L) and y.dtype == torch.float64
    assert (y - want_y).abs().max() < 1e-10
    assert (y2 - want_y).abs().max() < 1e-10
    assert h.shape == (BATCH, DIM, N)
    assert (h - want_h).abs().max() < 1e-10


@pytest.mark.parametrize("bc", ["selective", "grouped"])
def test_selective_scan_float32_matches_float64_loop(bc):
    opts = OPTIONS["everything"]
    inp = make_inputs(bc)
    want_y, want_h = loop_scan(
        inp["u"],
        inp["delta"],
        inp["A"],
        inp["B"],
        inp["C"],
        **{k: inp[k] for k in opts},
        delta_softplus=True,
    )
    inp32 = {k: (v.float() if v.is_floating_point() else v) for k, v in inp.items()}
    y, h = _call(ssm.selective_scan, inp32, opts, return_last_state=True)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert (y.double() - want_y).abs().max() < 1e-4 * max(1.0, want_y.abs().max().item())
    assert (h.double() - want_h).abs().max() < 1e-4 * max(1.0, want_h.abs().max().item())


def test_selective_scan_with_selective_B_and_fixed_C_matches_loop():
    inp = make_inputs("selective")
    C = make_inputs("fixed", seed=1)["C"]
    want_y, _ = loop_scan(inp["u"], inp["delta"], inp["A"], inp["B"], C, D=inp["D"])
    y = ssm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], C, D=inp["D"])
    assert (y - want_y).abs().max() < 1e-10


def test_selective_scan_with_ungrouped_B_and_grouped_C_matches_loop(kernel_calls):
    inp = make_inputs("selective")
    C = make_inputs("grouped", seed=1)["C"]
    want_y, _ = loop_scan(inp["u"], inp["delta"], inp["A"], inp["B"], C)
    assert (
        ssm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], C, backend="torch") - want_y
    ).abs().max() < 1e-10
    y = ssm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], C)
    assert (y - want_y).abs().max() < 1e-10


def test_resets_zero_the_state_before_the_step():
    """A reset at t equals starting a fresh scan at t from the zero state."""
    inp = make_inputs("selective", length=12)
    resets = torch.zeros(BATCH, 12, dtype=torch.bool)
    resets[:, 5] = True
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"])
    y, h = ssm.selective_scan(
        *args, return_last_state=True, initial_state=inp["initial_state"], resets=resets
    )
    tail = (
        inp["u"][..., 5:],
        inp["delta"][..., 5:],
        inp["A"],
        inp["B"][..., 5:],
        inp["C"][..., 5:],
        inp["D"],
    )
    y_tail, h_tail = ssm.selective_scan(*tail, return_last_state=True)
    assert (y[..., 5:] - y_tail).abs().max() < 1e-12
    assert (h - h_tail).abs().max() < 1e-12
    y_nores = ssm.selective_scan(*args, initial_state=inp["initial_state"])
    assert (y[..., 5:] - y_nores[..., 5:]).abs().max() > 1e-6


# -- 7b. fused kernel == torch reference: values and gradients ------------------------------------
DIFF_KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _values_and_grads(inp, backend, create_graph=False):
    leaves = {k: inp[k].clone().requires_grad_(True) for k in DIFF_KEYS}
    y, h = ssm.selective_scan(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        leaves["D"],
        leaves["z"],
        leaves["delta_bias"],
        True,
        True,
        initial_state=leaves["initial_state"],
        resets=inp["resets"],
        backend=backend,
    )
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    loss = (y * wy).sum() + (h * wh).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
    return y, h, dict(zip(DIFF_KEYS, grads, strict=True)), leaves


def _rel(a, b):
    return ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "bc,batch",
    [("selective", BATCH), ("grouped", BATCH), ("selective", 1)],
    ids=["selective", "grouped", "selective-batch1"],  # batch 1: the backward splits channels
)
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_fused_scan_matches_torch_values_and_gradients(dtype, bc, batch, with_resets, kernel_calls):
    inp = make_inputs(bc, dtype=dtype, batch=batch, length=17, seed=3)
    if not with_resets:
        inp["resets"] = None
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    y_r, h_r, g_r, _ = _values_and_grads(inp, "torch")
    assert kernel_calls == []
    y_f, h_f, g_f, _ = _values_and_grads(inp, "auto")
    assert kernel_calls == ["selective_scan_fwd", "selective_scan_bwd"]
    assert y_f.dtype == h_f.dtype == dtype
    assert _rel(y_f, y_r) < tol
    assert _rel(h_f, h_r) < tol
    for k in DIFF_KEYS:
        assert g_f[k].shape == inp[k].shape, k
        assert _rel(g_f[k], g_r[k]) < tol, k


def test_fused_scan_with_two_threads_matches_torch(kernel_calls):
    """The kernels' parallel paths (per-thread partial sums for dB, dC, dA) with 2 threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inp = make_inputs("grouped", batch=3, dim=8, length=23, seed=5)
        y_r, h_r, g_r, _ = _values_and_grads(inp, "torch")
        y_f, h_f, g_f, _ = _values_and_grads(inp, "auto")
    finally:
        torch.set_num_threads(old)
    assert "selective_scan_bwd" in kernel_calls
    assert _rel(y_f, y_r) < 1e-10 and _rel(h_f, h_r) < 1e-10
    for k in DIFF_KEYS:
        assert _rel(g_f[k], g_r[k]) < 1e-10, k


def test_fused_scan_accepts_non_contiguous_inputs(kernel_calls):
    inp = make_inputs("selective", seed=9)
    u_t = inp["u"].transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    B_t = inp["B"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_t.is_contiguous() and not B_t.is_contiguous()
    y = ssm.selective_scan(u_t, inp["delta"], inp["A"], B_t, inp["C"], inp["D"])
    y_ref = ssm.selective_scan(
        inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], backend="torch"
    )
    assert "selective_scan_fwd" in kernel_calls
    assert (y - y_ref).abs().max() < 1e-12


def test_fused_scan_gradcheck(kernel_calls):
    inp = make_inputs("grouped", batch=2, dim=4, length=6, seed=11)
    resets = inp["resets"].clone()
    resets[0, 2] = True

    def f(u, delta, A, B, C, D, z, delta_bias, h0):
        return ssm.selective_scan(
            u, delta, A, B, C, D, z, delta_bias, True, True, initial_state=h0, resets=resets
        )

    args = tuple(inp[k].clone().requires_grad_(True) for k in DIFF_KEYS)
    assert torch.autograd.gradcheck(f, args)
    assert "selective_scan_bwd" in kernel_calls


@pytest.mark.parametrize("bc", ["selective", "grouped"])
def test_fused_scan_double_backward_matches_reference(bc, kernel_calls):
    inp = make_inputs(bc, length=9, seed=4)

    def hvp(backend):
        _, _, g, leaves = _values_and_grads(inp, backend, create_graph=True)
        gen = torch.Generator().manual_seed(8)
        dot = sum(
            (g[k] * torch.randn(g[k].shape, generator=gen, dtype=g[k].dtype)).sum()
            for k in DIFF_KEYS
        )
        return torch.autograd.grad(dot, [leaves[k] for k in DIFF_KEYS])

    hv_r = hvp("torch")
    assert kernel_calls == []
    hv_f = hvp("auto")
    assert "selective_scan_fwd" in kernel_calls
    for k, a, b in zip(DIFF_KEYS, hv_f, hv_r, strict=True):
        assert torch.isfinite(a).all(), k
        assert _rel(a, b) < 1e-10, k
    assert max(b.abs().max().item() for b in hv_r) > 1e-6


def test_fused_scan_double_gradcheck():
    inp = make_inputs("selective", batch=1, dim=2, length=4, seed=12)
    keys = ("u", "delta", "B", "C", "initial_state")

    def f(u, delta, B, C, h0):
        return ssm.selective_scan(
            u,
            delta,
            inp["A"],
            B,
            C,
            inp["D"],
            None,
            None,
            True,
            True,
            initial_state=h0,
            resets=inp["resets"],
        )

    args = tuple(inp[k].clone().requires_grad_(True) for k in keys)
    assert torch.autograd.gradgradcheck(f, args)


def test_selective_scan_under_vmap_and_torch_func_grad_matches_loop():
    """Inside torch.func transforms the scan falls back to the reference and stays correct."""
    inp = make_inputs("selective", seed=13)
    opts = OPTIONS["everything"]
    u_batch = torch.stack([inp["u"], 2 * inp["u"]])

    def f(u):
        return ssm.selective_scan(
            u,
            inp["delta"],
            inp["A"],
            inp["B"],
            inp["C"],
            inp["D"],
            inp["z"],
            inp["delta_bias"],
            True,
            initial_state=inp["initial_state"],
            resets=inp["resets"],
        )

    y_v = torch.func.vmap(f)(u_batch)
    for i in range(2):
        want, _ = loop_scan(
            u_batch[i],
            inp["delta"],
            inp["A"],
            inp["B"],
            inp["C"],
            **{k: inp[k] for k in opts if k != "u"},
            delta_softplus=True,
        )
        assert (y_v[i] - want).abs().max() < 1e-10
    g_func = torch.func.grad(lambda u: f(u).square().sum())(inp["u"])
    u = inp["u"].clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(f(u).square().sum(), [u])
    assert (g_func - g_auto).abs().max() < 1e-10


def test_disable_cpu_kernels_env_var_uses_reference():
    code = (
        "import torch, ssm\n"
        "from ssm import backend\n"
        "torch.manual_seed(0)\n"
        "u = torch.randn(2, 4, 5, dtype=torch.float64)\n"
        "B = torch.randn(2, 3, 5, dtype=torch.float64)\n"
        "A = -torch.rand(4, 3, dtype=torch.float64)\n"
        "y = ssm.selective_scan(u, u.abs(), A, B, B)\n"
        "r = ssm.selective_scan_ref(u, u.abs(), A, B, B)\n"
        "assert backend.cpu_ext() is None\n"
        "assert torch.equal(y, r)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, SSM_DISABLE_CPU_KERNELS="1")
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# -- diagonal_linear_scan ------------------------------------------------------------------------
def _loop_linear(a, b, h0, time_varying):
    h = h0 if h0 is not None else torch.zeros_like(b[:, 0])
    out = []
    for t in range(b.shape[1]):
        h = (a[:, t] if time_varying else a) * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("time_varying", [True, False], ids=["tv", "lti"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_diagonal_linear_scan_matches_loop(length, time_varying, with_h0, cplx):
    g = torch.Generator().manual_seed(length)
    dtype = torch.complex128 if cplx else torch.float64

    def rnd(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        if cplx:
            x = torch.complex(x, torch.randn(*shape, generator=g, dtype=torch.float64))
        return x

    def stable(*shape):  # |a| < 1, as for a discretised stable system
        x = rnd(*shape)
        return 0.95 * x / (1 + x.abs())

    b = rnd(3, length, 5)
    a = stable(3, length, 5) if time_varying else stable(5)
    if time_varying and length > 2:
        a[0, length // 2] = 0  # a reset: exact zeros must cut the chain
    h0 = rnd(3, 5) if with_h0 else None
    h = ssm.diagonal_linear_scan(a, b, h0, dim=1)
    assert h.shape == b.shape and h.dtype == dtype
    want = _loop_linear(a, b, h0, time_varying)
    assert (h - want).abs().max() < 1e-10


def test_diagonal_linear_scan_along_other_dims():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(9, 4, generator=g, dtype=torch.float64)  # time first
    a = 0.8 * torch.randn(9, 4, generator=g, dtype=torch.float64)
    h0 = torch.randn(4, generator=g, dtype=torch.float64)
    h = ssm.diagonal_linear_scan(a, b, h0, dim=0)
    want = _loop_linear(a[None], b[None], h0[None], True)[0]
    assert (h - want).abs().max() < 1e-12
    h_last = ssm.diagonal_linear_scan(a.T, b.T, h0, dim=-1)  # time last
    assert (h_last.T - want).abs().max() < 1e-12


def test_diagonal_linear_scan_gradients_match_loop():
    g = torch.Generator().manual_seed(1)
    a = (0.9 * torch.rand(2, 13, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(2, 13, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 13, 3, generator=g, dtype=torch.float64)
    g1 = torch.autograd.grad((ssm.diagonal_linear_scan(a, b, h0) * w).sum(), [a, b, h0])
    g2 = torch.autograd.grad((_loop_linear(a, b, h0, True) * w).sum(), [a, b, h0])
    for x, y in zip(g1, g2, strict=True):
        assert (x - y).abs().max() < 1e-10
    assert torch.autograd.gradcheck(
        lambda a, b, h0: ssm.diagonal_linear_scan(a, b, h0),
        (
            a[:1, :5].detach().requires_grad_(True),
            b[:1, :5].detach().requires_grad_(True),
            h0[:1].detach().requires_grad_(True),
        ),
    )


def test_softplus_option_is_applied_after_bias():
    """delta_softplus=True with delta_bias equals passing softplus(delta + bias) directly."""
    inp = make_inputs("selective", seed=14)
    d = F.softplus(inp["delta"] + inp["delta_bias"][:, None])
    for backend in ("auto", "torch"):
        y1 = ssm.selective_scan(
            inp["u"],
            inp["delta"],
            inp["A"],
            inp["B"],
            inp["C"],
            delta_bias=inp["delta_bias"],
            delta_softplus=True,
            backend=backend,
        )
        y2 = ssm.selective_scan(inp["u"], d, inp["A"], inp["B"], inp["C"], backend=backend)
        assert (y1 - y2).abs().max() < 1e-12
