"""MAML on any module (metarl.meta.generic): the meta-gradient against the closed form on a
linear model, first order, and the refusal of non-sequence modules by the RL learners."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metarl.meta import MAML
from metarl.meta.generic import adapt, forward, parameters


def _data(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def _mse(model, p, x, y):
    return ((forward(model, p, x) - y) ** 2).mean()


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_the_closed_form(first_order):
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    (xs, ys), (xq, yq) = _data(1), _data(2)
    alpha = 0.3
    phi = adapt(model, lambda p: _mse(model, p, xs, ys), lr=alpha, first_order=first_order)
    _mse(model, phi, xq, yq).backward()
    got = model.weight.grad.reshape(-1)

    w = model.weight.detach().reshape(-1)
    n_s, n_q = len(xs), len(xq)
    grad_s = 2 / n_s * xs.T @ (xs @ w - ys.reshape(-1))
    w1 = w - alpha * grad_s
    grad_q = 2 / n_q * xq.T @ (xq @ w1 - yq.reshape(-1))
    hessian_s = 2 / n_s * xs.T @ xs
    want = (
        grad_q if first_order else (torch.eye(3, dtype=torch.float64) - alpha * hessian_s) @ grad_q
    )
    torch.testing.assert_close(got, want)
    if not first_order:  # the second-order term is really there
        assert not torch.allclose(got, grad_q)


def test_adaptation_leaves_the_module_alone_and_two_steps_compose():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    xs, ys = _data(3)
    loss = lambda p: _mse(model, p, xs, ys)  # noqa: E731
    two = adapt(model, loss, lr=0.1, steps=2)
    one = adapt(model, loss, params=adapt(model, loss, lr=0.1, steps=1), lr=0.1, steps=1)
    for k in two:
        torch.testing.assert_close(two[k], one[k])
    assert loss(two) < loss(parameters(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    zero = adapt(model, loss, steps=0)
    assert all(zero[k] is v for k, v in parameters(model).items())


def test_bad_input_is_one_line():
    model = nn.Linear(3, 1)
    x, y = _data(4)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        adapt(model, lambda p: _mse(model, p, x.float(), y.float()), lr=-1.0)
    with pytest.raises(ValueError, match="scalar tensor"):
        adapt(model, lambda p: forward(model, p, x.float()))
    with pytest.raises(ValueError, match="expected a torch.nn.Module"):
        adapt(lambda x: x, lambda p: p)


def test_rl_learners_refuse_a_plain_module_and_point_to_the_generic_surface():
    with pytest.raises(ValueError, match=r"metarl\.meta\.generic\.adapt"):
        MAML(nn.Sequential(nn.Linear(2, 2)))
