"""``ssm.LayerNorm``: the values of torch's fused layer norm, with derivatives that stay exact
where the fused kernel's do not (second order under ``vmap``, third order)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import ssm
from ssm.norm import composite_needed, exact_norms


def test_composite_norm_has_the_values_and_state_dict_of_nn_layernorm():
    torch.manual_seed(0)
    ours, theirs = ssm.LayerNorm(6), nn.LayerNorm(6)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert isinstance(ours, nn.LayerNorm) and list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(
        ours.double()(x), F.layer_norm(x, (6,), ours.weight, ours.bias), rtol=1e-13, atol=1e-13
    )
    x32 = 3 + 10 * torch.randn(7, 6)
    torch.testing.assert_close(ours.float()(x32), theirs(x32), rtol=1e-5, atol=1e-5)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), ssm.LayerNorm(4)).double()


def test_vmapped_second_order_gradient_matches_a_python_loop():
    net = _net()
    xs = torch.randn(3, 5, 4, dtype=torch.float64)
    theta = {k: v.detach() for k, v in net.named_parameters()}

    def task(p, x):  # one MAML step, then a loss at the adapted parameters
        g = grad(lambda q: (functional_call(net, q, (x,)) ** 3).sum())(p)
        adapted = {k: p[k] - 0.1 * g[k] for k in p}
        return (functional_call(net, adapted, (1.5 * x,)) ** 2).sum()

    batched = grad(lambda p: vmap(task, in_dims=(None, 0))(p, xs).sum())(theta)
    looped = grad(lambda p: sum(task(p, xs[i]) for i in range(3)))(theta)
    for k in theta:
        torch.testing.assert_close(batched[k], looped[k], rtol=1e-9, atol=1e-9)


def test_third_order_derivative_matches_finite_differences_of_the_second():
    net = _net()
    x = torch.randn(5, 4, dtype=torch.float64)
    v = torch.randn(5, 4, dtype=torch.float64)

    def f(y):
        return (net(y) ** 3 * torch.arange(1.0, 5.0, dtype=y.dtype)).sum()

    def vhv(y, create_graph=False):  # v^T H(y) v by double backward
        y = y.detach().requires_grad_() if not y.requires_grad else y
        (g,) = torch.autograd.grad(f(y), y, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), y, create_graph=create_graph)
        return (hv * v).sum(), y

    with exact_norms():  # higher orders by plain autograd, outside any transform: ask for it
        h, y = vhv(x.clone().requires_grad_(), create_graph=True)
        (third,) = torch.autograd.grad(h, y)
        eps = 1e-5
        fd = (vhv(x + eps * v)[0] - vhv(x - eps * v)[0]) / (2 * eps)
    torch.testing.assert_close((third * v).sum(), fd.detach(), rtol=1e-6, atol=1e-8)


def test_the_composite_form_runs_in_transforms_and_exact_mode_the_fused_kernel_elsewhere():
    import torch.autograd.forward_ad as fwAD
    from torch.func import jvp

    seen = []

    def probe(x):
        seen.append(composite_needed())
        return x.sum()

    assert composite_needed() is False  # plain (first-order) training and acting: fused
    with torch.no_grad():
        assert composite_needed() is False
    vmap(probe)(torch.ones(2, 3))
    jvp(probe, (torch.ones(3),), (torch.ones(3),))
    grad(probe)(torch.ones(3))
    with fwAD.dual_level():
        seen.append(composite_needed())
    with exact_norms():
        seen.append(composite_needed())
        with exact_norms():
            seen.append(composite_needed())
        seen.append(composite_needed())
    assert seen == [True] * 7 and composite_needed() is False
    with torch.no_grad():  # acting under vmap (adapted parameters per task): values only
        seen.clear()
        vmap(probe)(torch.ones(2, 3))
        jvp(probe, (torch.ones(3),), (torch.ones(3),))
        assert seen == [False, True]
    norm, x = ssm.LayerNorm(4).double(), torch.randn(3, 4, dtype=torch.float64)
    # outside transforms the values (and first derivatives) are torch's own, bit for bit, so
    # first-order training runs as it did with nn.LayerNorm
    assert torch.equal(norm(x), F.layer_norm(x, (4,), norm.weight, norm.bias))
