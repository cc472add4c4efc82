"""Outer steps: MAML-TRPO's constrained step and its Fisher-vector product, and Reptile."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from metarl.meta import MAML, Reptile, trpo_step
from metarl.meta import functional as F
from metarl.meta.batch import select_task
from metarl.meta.testing import tiny_meta_batch, tiny_policy
from metarl.meta.trpo import hessian_vector_product_operator


@pytest.fixture(scope="module")
def maml_batch():
    policy, family = tiny_policy("gru", max_episode_steps=6)
    learner = MAML(policy, inner_lr=0.3, inner_steps=1)
    return (learner, *tiny_meta_batch(learner, family))


def test_kl_of_the_adapted_policies_is_zero_at_the_old_parameters(maml_batch):
    learner, sup, qry = maml_batch
    assert float(learner.query_kl(learner.params(), sup, qry)) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("kind", ["gru", "mamba"])
def test_fisher_vector_product_through_the_inner_loop_matches_finite_differences(kind):
    """The TRPO metric is a third derivative of the policy (Hessian of a KL that contains an
    inner gradient step); it must be exact, layer norms included. For Mamba on CPU the scan is
    ssm.selective_recurrence, whose third derivative goes through the reference."""
    policy, family = tiny_policy(kind, max_episode_steps=6)
    learner = MAML(policy, inner_lr=0.3, inner_steps=1)
    sup, qry = tiny_meta_batch(learner, family)
    theta = learner.params()
    gen = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
    # evaluate at a point where the KL's gradient is not zero, so every term is exercised
    point = F.add(theta, v, 0.05)

    def kl(p):
        return learner.query_kl(p, sup, qry)

    fvp = hessian_vector_product_operator(kl, point)(v)  # what the TRPO step uses
    torch.testing.assert_close(fvp, F.hvp(kl, point, v))  # and forward-over-reverse agrees
    eps = 1e-5
    fd = F.add(grad(kl)(F.add(point, v, eps)), grad(kl)(F.add(point, v, -eps)), -1.0)
    fd = {k: t / (2 * eps) for k, t in fd.items()}
    err = float(F.sq_norm(F.sub(fvp, fd)).sqrt() / F.sq_norm(fd).sqrt())
    assert err < 1e-6


def test_trpo_step_stays_within_the_kl_bound_and_lowers_the_query_loss(maml_batch):
    learner, sup, qry = maml_batch
    theta = learner.params()

    def loss(p):
        return learner.meta_loss(p, sup, qry)[0]

    def kl(p):
        return learner.query_kl(p, sup, qry)

    for max_kl in (1e-3, 1e-2):
        res = trpo_step(theta, loss, kl, max_kl=max_kl, cg_steps=10, damping=1e-3)
        assert res.accepted
        measured = float(kl(res.params))
        assert measured == pytest.approx(res.kl, rel=1e-9)
        assert 0 < measured <= max_kl
        assert float(loss(res.params)) < float(loss(theta))
        assert res.loss_after < res.loss_before
        if res.step_fraction < 1:  # the line search took the first acceptable step
            longer = F.add(theta, F.sub(res.params, theta), 2.0)  # backtrack_ratio = 0.5
            assert float(kl(longer)) > max_kl or float(loss(longer)) >= res.loss_before


def test_trpo_rejects_a_step_that_cannot_improve(maml_batch):
    learner, sup, qry = maml_batch
    theta = learner.params()

    def steep(p):  # rises quadratically away from θ faster than the surrogate can fall
        return learner.meta_loss(p, sup, qry)[0] + 1e6 * F.sq_norm(F.sub(p, theta))

    res = trpo_step(theta, steep, lambda p: learner.query_kl(p, sup, qry), max_backtracks=2)
    assert not res.accepted and res.step_fraction == 0
    for k in theta:
        assert torch.equal(res.params[k], theta[k])


def test_reptile_moves_the_initialisation_toward_the_adapted_parameters():
    policy, family = tiny_policy("gru", max_episode_steps=6)
    learner = Reptile(policy, inner_lr=0.3, inner_steps=3)
    sup, qry = tiny_meta_batch(learner, family)
    theta = learner.params()
    adapted = learner.adapt_tasks(theta, sup)
    mg = learner.meta_gradient(sup)
    mean_phi = {k: v.mean(0) for k, v in adapted.items()}
    for k in theta:
        torch.testing.assert_close(mg.grads[k], theta[k] - mean_phi[k])
    # each task's φ is 3 inner steps of that task's own surrogate
    phi0 = theta
    for step in range(3):
        phi0 = learner.inner_step(phi0, select_task(sup, 0), step)
    for k in theta:
        torch.testing.assert_close(adapted[k][0], phi0[k], rtol=1e-10, atol=1e-12)
    # an SGD outer step of size ε is θ + ε (mean φ - θ): it halves the distance for ε = ½
    opt = torch.optim.SGD(learner.named_parameters().values(), lr=0.5)
    for name, p in learner.named_parameters().items():
        p.grad = mg.grads[name].clone()
    opt.step()
    new = learner.params()
    before = float(F.sq_norm(F.sub(theta, mean_phi)).sqrt())
    after = float(F.sq_norm(F.sub(new, mean_phi)).sqrt())
    assert after == pytest.approx(0.5 * before, rel=1e-9) and before > 0
