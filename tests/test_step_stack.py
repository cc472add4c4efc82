"""``ssm.step_stack.stack_steps``: torch.stack's values and derivatives (any order, forward
mode, vmap), with a backward that stays O(L) when differentiated again."""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from ssm.step_stack import stack_steps


def _loss(stack, x):
    ys = [torch.tanh(s) * (i + 1) for i, s in enumerate(x.unbind(1))]
    return (stack(ys, 1) ** 3).sum()


def _ours(ys, dim):
    return stack_steps(ys, dim)


def test_values_and_derivatives_of_every_order_match_torch_stack():
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    assert torch.equal(stack_steps(list(x.unbind(1)), 1), x)
    g_ref = grad(lambda x: _loss(torch.stack, x))
    g_new = grad(lambda x: _loss(_ours, x))
    torch.testing.assert_close(g_new(x), g_ref(x), rtol=1e-12, atol=1e-12)
    v = torch.randn_like(x)
    hvp_ref = grad(lambda x: (g_ref(x) * v).sum())(x)
    hvp_new = grad(lambda x: (g_new(x) * v).sum())(x)
    torch.testing.assert_close(hvp_new, hvp_ref, rtol=1e-12, atol=1e-12)
    fwd_ref = jvp(g_ref, (x,), (v,))[1]  # forward over reverse
    fwd_new = jvp(g_new, (x,), (v,))[1]
    torch.testing.assert_close(fwd_new, fwd_ref, rtol=1e-12, atol=1e-12)
    xs = torch.randn(5, 3, 7, 4, dtype=torch.float64)
    torch.testing.assert_close(vmap(g_new)(xs), vmap(g_ref)(xs), rtol=1e-12, atol=1e-12)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _second_order_ops(stack) -> dict[str, int]:
    x = torch.randn(2, 50, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_loss(stack, x), x, create_graph=True)
    with _CountOps() as mode:
        torch.autograd.grad(g.pow(2).sum(), x)
    return mode.calls


def test_the_second_backward_builds_no_whole_sequence_zero_per_step():
    # torch.stack: one select per step in the first backward, so one select_backward (a zero
    # tensor of the whole sequence, then a copy) per step in the second: O(L^2)
    assert _second_order_ops(torch.stack).get("aten.select_backward.default", 0) >= 50
    ours = _second_order_ops(_ours)
    assert ours.get("aten.select_backward.default", 0) == 0
    assert ours.get("aten.cat.default", 0) <= 4


def test_forward_mode_fills_absent_tangents_with_zeros():
    a, b = torch.randn(3, 2), torch.randn(3, 2)
    _, t = jvp(lambda a: stack_steps([a, b], 1), (a,), (torch.ones_like(a),))  # b has no tangent
    assert torch.equal(t[:, 0], torch.ones(3, 2))
    assert torch.equal(t[:, 1], torch.zeros(3, 2))


def test_forward_over_forward_matches_torch_stack():
    """Nested jvp: torch drops the outer tangent through an autograd.Function's jvp rule
    (pytorch/pytorch#197867), so stack_steps falls back to torch.stack there."""
    g = torch.Generator().manual_seed(0)
    xs, tx, dx, dtx = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(4))

    def f(stack):
        return lambda x: stack([x[i] * x[i] for i in range(5)], dim=-1)

    def nested(stack):
        inner = lambda x, t: torch.func.jvp(f(stack), (x,), (t,))[1]  # noqa: E731
        return torch.func.jvp(inner, (xs, tx), (dx, dtx))[1]

    want = nested(torch.stack)
    assert want.abs().max() > 1e-3
    assert (nested(stack_steps) - want).abs().max() < 1e-12
