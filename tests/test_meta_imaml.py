"""iMAML: conjugate gradient, and the implicit meta-gradient against the exact gradient of a
proximal inner problem solved to convergence (a quadratic, where everything is closed-form)."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from metarl.meta import IMAML, conjugate_gradient, implicit_meta_gradient
from metarl.meta import functional as F
from metarl.meta.batch import select_task
from metarl.meta.testing import tiny_meta_batch, tiny_policy

F64 = torch.float64


def spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    return m @ m.T / n + 0.5 * torch.eye(n, dtype=F64)


def test_conjugate_gradient_solves_an_spd_system_on_parameter_dicts():
    a, b = spd(6, 0), torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(1))

    def matvec(v):
        flat = torch.cat([v["x"], v["y"]])
        out = a @ flat
        return {"x": out[:4], "y": out[4:]}

    x, residual = conjugate_gradient(matvec, {"x": b[:4], "y": b[4:]}, steps=6)
    torch.testing.assert_close(torch.cat([x["x"], x["y"]]), torch.linalg.solve(a, b))
    assert float(residual) < 1e-20
    # a zero right-hand side stays zero (no 0/0), also under vmap
    z, _ = conjugate_gradient(
        matvec, {"x": torch.zeros(4, dtype=F64), "y": torch.zeros(2, dtype=F64)}, 3
    )
    assert all(float(t.abs().max()) == 0 for t in z.values())
    batched = vmap(
        lambda r: conjugate_gradient(lambda v: {"x": a[:4, :4] @ v["x"]}, {"x": r}, 4)[0]
    )
    rhs = torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(batched(rhs)["x"], torch.linalg.solve(a[:4, :4], rhs.T).T)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_implicit_gradient_matches_the_exact_gradient_of_the_proximal_solution(lam):
    n = 5
    a = spd(n, 2)  # inner: ½ φᵀAφ - bᵀφ     outer: ½ ‖φ - c‖²
    g = torch.Generator().manual_seed(3)
    b, c, theta = (torch.randn(n, generator=g, dtype=F64) for _ in range(3))

    def inner(p):
        return 0.5 * p["w"] @ a @ p["w"] - b @ p["w"]

    def outer(p):
        return 0.5 * ((p["w"] - c) ** 2).sum()

    # φ*(θ) = (A + λI)⁻¹ (b + λθ), differentiated exactly by autograd through the solve
    t = theta.clone().requires_grad_()
    phi_star = torch.linalg.solve(a + lam * torch.eye(n, dtype=F64), b + lam * t)
    (exact,) = torch.autograd.grad(outer({"w": phi_star}), t)

    # the inner problem solved to convergence by gradient descent, then the implicit gradient
    solved = F.proximal_solve(inner, {"w": theta}, lam, lr=0.2, steps=400)
    torch.testing.assert_close(solved["w"], phi_star.detach(), rtol=1e-10, atol=1e-12)
    implicit, residual = implicit_meta_gradient(inner, outer, solved, lam, cg_steps=n)
    torch.testing.assert_close(implicit["w"], exact, rtol=1e-9, atol=1e-12)
    assert float(residual) < 1e-18
    # with damping δ the solve is ((1 + δ) I + A/λ)⁻¹ g, as documented
    damped, _ = implicit_meta_gradient(inner, outer, solved, lam, cg_steps=n, damping=0.1)
    want = torch.linalg.solve(1.1 * torch.eye(n, dtype=F64) + a / lam, solved["w"] - c)
    torch.testing.assert_close(damped["w"], want, rtol=1e-9, atol=1e-12)


def test_imaml_learner_vmap_equals_loop_and_approaches_fomaml_for_large_lambda():
    policy, family = tiny_policy("gru", max_episode_steps=6)
    learner = IMAML(policy, inner_lr=0.1, inner_steps=3, lam=2.0, cg_steps=4)
    sup, qry = tiny_meta_batch(learner, family)
    a = learner.meta_gradient(sup, qry)
    learner.vectorize = False
    b = learner.meta_gradient(sup, qry)
    for k in a.grads:
        torch.testing.assert_close(a.grads[k], b.grads[k], rtol=1e-9, atol=1e-12)
    assert all(torch.isfinite(v).all() for v in a.grads.values())
    assert {"outer_loss", "inner_loss", "adapt_distance", "cg_residual"} <= set(a.stats)
    # The implicit gradient differs from the plain gradient at φ* by the curvature term only:
    # (I + H/λ)⁻¹ g → g as λ → ∞.
    big = IMAML(policy, inner_lr=1e-6, inner_steps=3, lam=1e5, cg_steps=4)
    g_big = big.meta_gradient(sup, qry).grads
    theta = big.params()
    plain = F.zeros_like(theta)

    for i in range(3):
        s, q = select_task(sup, i), select_task(qry, i)
        phi = big.adapt(theta, s)
        plain = F.add(plain, grad(lambda p, q=q: big.outer_loss(p, q))(phi), 1 / 3)
    gap = float(F.sq_norm(F.sub(g_big, plain)).sqrt() / F.sq_norm(plain).sqrt())
    assert gap < 1e-4
