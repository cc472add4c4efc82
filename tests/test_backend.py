"""Backend selection: fallbacks for transforms and double backward, and clear errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call, grad

import ssm
from ssm import backend
from ssm.selective_scan import FirstOrderKernel, selective_scan_ref


def _scan_inputs(dtype=torch.float64, B=2, D=3, L=6, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, dtype=dtype, generator=g).requires_grad_()

    A = (-torch.rand(D, N, dtype=dtype, generator=g)).requires_grad_()
    return [r(B, D, L), r(B, D, L), A, r(B, N, L), r(B, N, L), r(D), None, r(D)]


def test_first_order_kernel_wrapper_uses_fast_graph_then_reference_for_double_backward():
    """The wrapper used around mamba-ssm's CUDA scan, exercised with a CPU stand-in: first-order
    gradients come from the fast graph, double backward and last-state gradients from the
    reference, and all of them equal the reference's."""
    calls = {"fast": 0, "ref": 0}

    def fast(*a):
        calls["fast"] += 1
        return selective_scan_ref(*a, True, True)

    def ref(*a):
        calls["ref"] += 1
        return selective_scan_ref(*a, True, True)

    ins = _scan_inputs()
    tensors = [t for t in ins if t is not None]
    out, last = FirstOrderKernel.apply(fast, ref, *ins)
    out_ref, last_ref = selective_scan_ref(*ins, True, True)

    g = torch.autograd.grad(out.pow(2).sum(), tensors, retain_graph=True)
    g_ref = torch.autograd.grad(out_ref.pow(2).sum(), tensors, retain_graph=True)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert calls == {"fast": 1, "ref": 0}

    def hessian_sum(o, la):
        gs = torch.autograd.grad(o.pow(2).sum() + la.sum(), tensors, create_graph=True)
        return torch.autograd.grad(sum(x.sum() for x in gs), tensors)

    for a, b in zip(hessian_sum(out, last), hessian_sum(out_ref, last_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert calls["ref"] == 1


def test_transform_runs_the_fused_core_with_reference_gradients(caplog, kernel_calls):
    """Inside torch.func the CPU scan is the twice-differentiable fused core (no fallback, no
    fallback message), with the reference's gradients."""
    layer = ssm.make_layer("mamba", 4, d_state=3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    backend._said.discard("functorch-scan")

    def g(pinned):
        layer.backend = pinned
        return grad(lambda p: functional_call(layer, (p,), (x,))[0].sin().sum())(params)

    with caplog.at_level(logging.INFO, logger="ssm"):
        fused = g("auto")
    assert "core_scan_bwd" in kernel_calls
    assert not [r for r in caplog.records if "torch.func transform active" in r.message]
    calls = len(kernel_calls)
    want = g("torch")
    assert len(kernel_calls) == calls
    for k in params:
        assert (fused[k] - want[k]).abs().max() < 1e-10, k


def test_cuda_backend_on_cpu_tensors_is_a_clear_error():
    layer = ssm.make_layer("mamba", 4, d_state=3, backend="cuda")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        layer(torch.randn(1, 3, 4))


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        ssm.make_layer("mamba", 4, backend="triton")


def test_disabling_cpu_kernels_gives_the_same_numbers():
    """SSM_DISABLE_CPU_KERNELS=1 (e.g. no compiler) runs the reference path with equal results."""
    code = (
        "import torch, ssm; torch.manual_seed(0);"
        "l = ssm.make_layer('mamba', 8, d_state=4).double();"
        "x = torch.randn(2, 9, 8, dtype=torch.float64);"
        "r = torch.rand(2, 9) < 0.3;"
        "y, _ = l(x, resets=r); print(repr(y.sum().item()));"
        "from ssm import backend; print(backend.cpu_ext() is None)"
    )
    outs = []
    for disable in ("1", "0"):
        env = dict(os.environ, SSM_DISABLE_CPU_KERNELS=disable)
        res = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        outs.append(res.stdout.split())
    (y_ref, none_ref), (y_fused, none_fused) = outs
    assert none_ref == "True" and none_fused == "False"
    assert abs(float(y_ref) - float(y_fused)) < 1e-10
