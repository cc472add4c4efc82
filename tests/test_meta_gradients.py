"""MAML meta-gradients: finite differences, the `higher` oracle, vmap vs loop, FOMAML, learned
inner learning rates and the multi-step loss (the composite layer norm: ``tests/test_norm.py``)."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from metarl.meta import MAML, msl_weights
from metarl.meta import functional as F
from metarl.meta.batch import select_task
from metarl.meta.testing import tiny_meta_batch, tiny_policy

_CACHE: dict = {}


def setup(kind: str, **kw):
    """(learner, supports, query) for a tiny float64 policy on 3 nav2d tasks of 6 steps."""
    key = (kind, tuple(sorted(kw.items())))
    if key not in _CACHE:
        policy, family = tiny_policy(kind, max_episode_steps=6)
        learner = MAML(policy, inner_lr=0.3, inner_steps=kw.pop("inner_steps", 2), **kw)
        _CACHE[key] = (learner, *tiny_meta_batch(learner, family))
    return _CACHE[key]


def directional(grads: dict, v: dict) -> float:
    return float(sum((grads[k] * v[k]).sum() for k in v))


@pytest.mark.parametrize("kind", ["gru", "mamba"])
def test_maml_meta_gradient_matches_finite_differences(kind):
    learner, sup, qry = setup(kind)
    mg = learner.meta_gradient(sup, qry)
    theta = learner.params()
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
        eps = 1e-6

        def loss(s, v=v):
            return float(learner.meta_loss(F.add(theta, v, s), sup, qry)[0])

        fd = (loss(eps) - loss(-eps)) / (2 * eps)
        assert directional(mg.grads, v) == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kind", ["gru", "mamba", "s4d"])
def test_maml_meta_gradient_matches_higher(kind):
    pytest.importorskip("higher")
    from metarl.meta.testing import higher_meta_gradient

    learner, sup, qry = setup(kind)
    ours = learner.meta_gradient(sup, qry).grads
    ref = higher_meta_gradient(learner.policy, sup, qry, 0.3, 2)
    assert max(float(v.abs().max()) for v in ref.values()) > 1e-3  # not trivially zero
    for name, g in ref.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-8, atol=1e-11, msg=name)


@pytest.mark.parametrize("kind", ["gru", "mamba", "s4d"])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_and_loop_give_the_same_meta_gradient(kind, first_order):
    learner, sup, qry = setup(kind)
    learner.vectorize = True
    a = learner.meta_gradient(sup, qry, first_order=first_order)
    learner.vectorize = False
    b = learner.meta_gradient(sup, qry, first_order=first_order)
    learner.vectorize = True
    for name in a.grads:
        torch.testing.assert_close(a.grads[name], b.grads[name], rtol=1e-9, atol=1e-12)
    assert a.stats["outer_loss"] == pytest.approx(b.stats["outer_loss"], abs=1e-12)


@pytest.mark.parametrize("kind", ["gru", "mamba"])
def test_vmap_in_task_chunks_gives_the_same_meta_gradient(kind):
    learner, sup, qry = setup(kind)  # 3 tasks: chunks of 2 leave a remainder
    whole = learner.meta_gradient(sup, qry).grads
    learner.vmap_chunk = 2
    try:
        chunked = learner.meta_gradient(sup, qry).grads
    finally:
        learner.vmap_chunk = None
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-10, atol=1e-13)


def test_a_bad_vmap_chunk_is_refused():
    policy, _ = tiny_policy("gru", max_episode_steps=6)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="vmap_chunk"):
            MAML(policy, inner_lr=0.1, vmap_chunk=bad)


def test_fomaml_is_the_gradient_at_the_adapted_parameters_with_stop_gradient():
    learner, sup, qry = setup("gru")
    fo = learner.meta_gradient(sup, qry, first_order=True).grads
    theta = learner.params()
    manual = F.zeros_like(theta)
    for i in range(sup.n_tasks):
        s, q = select_task(sup, i), select_task(qry, i)
        phi = F.detach(learner.adapt(theta, s, first_order=True))
        g = grad(lambda p, q=q: learner.outer_loss(p, q))(phi)
        manual = F.add(manual, g, 1.0 / sup.n_tasks)
    for name in manual:
        torch.testing.assert_close(fo[name], manual[name], rtol=1e-10, atol=1e-13)
    so = learner.meta_gradient(sup, qry, first_order=False).grads
    assert max(float((so[k] - fo[k]).abs().max()) for k in so) > 1e-6  # the test can fail


def test_adapt_then_backward_is_the_meta_gradient_learn2learn_style():
    learner, sup, qry = setup("gru")
    policy = learner.policy
    policy.zero_grad()
    for i in range(sup.n_tasks):
        phi = learner.adapt(None, select_task(sup, i))  # from the module's own parameters
        (learner.outer_loss(phi, select_task(qry, i)) / sup.n_tasks).backward()
    mg = learner.meta_gradient(sup, qry).grads
    for name, p in learner.named_parameters().items():
        g = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(g, mg[name], rtol=1e-9, atol=1e-12)
    policy.zero_grad()


@pytest.mark.parametrize("lr_mode", ["lslr", "meta_sgd"])
def test_learned_inner_learning_rates_receive_their_exact_gradient(lr_mode):
    learner, sup, qry = setup("gru", lr_mode=lr_mode)
    mg = learner.meta_gradient(sup, qry)
    assert set(mg.lr_grads) == set(learner.lrs)
    for name, g in mg.lr_grads.items():
        assert g.shape == learner.lrs[name].shape and torch.isfinite(g).all()
    assert sum(float(g.abs().sum()) for g in mg.lr_grads.values()) > 0
    # the gradient of one step's rate of one layer, against finite differences
    name = "head.mean.weight"
    rates = F.detach(learner.lrs)
    e = torch.zeros_like(rates[name])
    e.view(-1)[0] = 1.0
    theta, eps = learner.params(), 1e-6

    def loss(s):
        shifted = dict(rates) | {name: rates[name] + s * e}
        return float(learner.meta_loss(theta, sup, qry, lrs=shifted)[0])

    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    assert float(mg.lr_grads[name].view(-1)[0]) == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_multi_step_loss_weights_anneal_to_the_last_step_and_enter_the_loss():
    w0, w_mid, w_end = msl_weights(3, 0, 10), msl_weights(3, 5, 10), msl_weights(3, 100, 10)
    assert w0 == pytest.approx([1 / 3] * 3)
    assert sum(w_mid) == pytest.approx(1) and w_mid[0] < w0[0] and w_mid[-1] > w0[-1]
    assert w_end == pytest.approx([0.01, 0.01, 0.98])
    learner, sup, qry = setup("gru", multi_step_loss=True, msl_anneal_iters=10)
    s, q, theta = select_task(sup, 0), select_task(qry, 0), learner.params()
    loss, _ = learner.task_loss(theta, s, q, weights=[0.25, 0.75])
    path, _ = learner._adapt_all(theta, s, None, False)
    expected = 0.25 * learner.outer_loss(path[0], q) + 0.75 * learner.outer_loss(path[1], q)
    assert float(loss) == pytest.approx(float(expected), abs=1e-14)
