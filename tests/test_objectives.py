"""GAE, VPG and PPO objectives: hand-computed cases, edge cases, and torch.func compatibility."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from metarl.objectives import explained_variance, gae, normalize_advantages, ppo_loss, vpg_loss

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def hand_case():
    """T=4, B=2, γ=0.5, λ=0.5 (so γλ=0.25).

    Column 0 terminates at t=1 (a 100 in bootstrap_values there must be ignored):
        r = [1, 0, 2, 1], V = [0.5, 1, 2, 1], last_value = 4
        δ3 = 1 + 0.5·4 - 1 = 2          A3 = 2
        δ2 = 2 + 0.5·1 - 2 = 0.5        A2 = 0.5 + 0.25·2 = 1
        δ1 = 0 + 0 (terminal) - 1 = -1  A1 = -1   (done: recursion stops)
        δ0 = 1 + 0.5·1 - 0.5 = 1        A0 = 1 + 0.25·(-1) = 0.75
        R = A + V = [1.25, 0, 3, 3]
    Column 1 is truncated at t=2 with V(final_obs) = 8:
        r = [1, 1, 1, 1], V = [1, 2, 3, 4], last_value = 2
        δ3 = 1 + 0.5·2 - 4 = -2         A3 = -2
        δ2 = 1 + 0.5·8 - 3 = 2          A2 = 2    (bootstraps from 8, not V3 = 4; stops)
        δ1 = 1 + 0.5·3 - 2 = 0.5        A1 = 0.5 + 0.25·2 = 1
        δ0 = 1 + 0.5·2 - 1 = 1          A0 = 1 + 0.25·1 = 1.25
        R = [2.25, 3, 5, 2]
    """
    rewards = t([[1, 1], [0, 1], [2, 1], [1, 1]])
    values = t([[0.5, 1], [1, 2], [2, 3], [1, 4]])
    terminated = torch.zeros(4, 2, dtype=torch.bool)
    terminated[1, 0] = True
    truncated = torch.zeros(4, 2, dtype=torch.bool)
    truncated[2, 1] = True
    bootstrap = torch.zeros(4, 2, dtype=F64)
    bootstrap[2, 1] = 8.0
    bootstrap[1, 0] = 100.0  # at a termination: must not be used
    last_value = t([4, 2])
    return rewards, values, terminated, truncated, bootstrap, last_value


def test_gae_matches_hand_computed_case():
    adv, ret = gae(*hand_case(), gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, t([[0.75, 1.25], [-1, 1], [1, 2], [2, -2]]))
    torch.testing.assert_close(ret, t([[1.25, 2.25], [0, 3], [3, 5], [3, 2]]))


def discounted_returns(rewards, terminated, truncated, bootstrap, last_value, gamma):
    """G_t = r_t + γ G_{t+1} within an episode; G continues from V(final_obs) at a truncation."""
    G = last_value.clone()
    out = torch.empty_like(rewards)
    for i in reversed(range(rewards.shape[0])):
        nxt = torch.where(truncated[i], bootstrap[i], G)
        G = rewards[i] + gamma * (~terminated[i]).to(F64) * nxt
        out[i] = G
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gae_with_lambda_one_is_discounted_return_minus_value(gamma):
    g = torch.Generator().manual_seed(0)
    T, B = 12, 3
    rewards = torch.randn(T, B, generator=g, dtype=F64)
    values = torch.randn(T, B, generator=g, dtype=F64)
    terminated = torch.zeros(T, B, dtype=torch.bool)
    truncated = torch.zeros(T, B, dtype=torch.bool)
    terminated[3, 0] = terminated[8, 1] = True
    truncated[5, 0] = truncated[10, 2] = True
    bootstrap = torch.where(truncated, torch.randn(T, B, generator=g, dtype=F64), 0.0)
    last_value = torch.randn(B, generator=g, dtype=F64)
    adv, ret = gae(rewards, values, terminated, truncated, bootstrap, last_value, gamma, 1.0)
    G = discounted_returns(rewards, terminated, truncated, bootstrap, last_value, gamma)
    torch.testing.assert_close(ret, G)
    torch.testing.assert_close(adv, G - values)


def test_truncation_bootstraps_and_termination_does_not():
    rewards, values, terminated, truncated, bootstrap, last_value = hand_case()
    base, _ = gae(rewards, values, terminated, truncated, bootstrap, last_value, 0.5, 0.5)
    # Raising V(final_obs) at the truncated step (2, 1) raises A there by γ·Δ, and A1 by γλ·γ·Δ.
    moved = bootstrap.clone()
    moved[2, 1] += 4.0
    adv, _ = gae(rewards, values, terminated, truncated, moved, last_value, 0.5, 0.5)
    diff = adv - base
    assert diff[2, 1] == pytest.approx(2.0) and diff[1, 1] == pytest.approx(0.5)
    assert diff[3, 1] == 0 and diff[:, 0].abs().max() == 0
    # bootstrap values at a termination (even one flagged truncated too) are ignored.
    both = truncated.clone()
    both[1, 0] = True
    adv_both, _ = gae(rewards, values, terminated, both, bootstrap * 1000, last_value, 0.5, 0.5)
    torch.testing.assert_close(adv_both[:, 0], base[:, 0])
    # ...and the next value across a truncation is not V_{t+1} (the next episode's start).
    no_trunc = torch.zeros_like(truncated)
    adv_nt, _ = gae(rewards, values, terminated, no_trunc, bootstrap, last_value, 0.5, 0.5)
    assert adv_nt[2, 1] != base[2, 1]


def test_normalize_advantages_and_explained_variance():
    adv = torch.tensor([1.0, 2.0, 3.0, 6.0])
    n = normalize_advantages(adv)
    assert n.mean().abs() < 1e-6 and (n.std() - 1).abs() < 1e-6
    ret = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(ret, ret) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), ret) == pytest.approx(0.0)


def test_vpg_gradient_raises_log_prob_of_positive_advantage_actions():
    log_probs = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.0])
    vpg_loss(log_probs, adv).backward()
    # descent direction -grad: up for A > 0, down for A < 0, untouched for A = 0
    torch.testing.assert_close(log_probs.grad, -adv / 3)


def ppo_inputs(new_lp, adv, n=None):
    n = len(new_lp) if n is None else n
    zeros = torch.zeros(n)
    return dict(
        new_log_probs=new_lp,
        old_log_probs=zeros,
        advantages=adv,
        new_values=zeros,
        old_values=zeros,
        returns=zeros,
        entropy=zeros,
    )


def test_ppo_at_ratio_one_is_minus_mean_advantage_with_zero_kl():
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    lp = torch.tensor([-0.3, -1.2, -2.0, -0.1])
    kw = ppo_inputs(lp, adv)
    kw["old_log_probs"] = lp.clone()
    loss, stats = ppo_loss(**kw)
    assert stats["policy_loss"] == pytest.approx(-adv.mean().item())
    assert loss == pytest.approx(-adv.mean().item())
    assert stats["approx_kl"].abs() < 1e-7
    assert stats["clip_fraction"] == 0


def test_ppo_clipping_zeroes_gradient_of_clipped_samples():
    # ratios e^x: 1.5 (A>0, clipped), 0.5 (A<0, clipped), 1.5 (A<0, NOT clipped: the pessimistic
    # bound is the unclipped one), 1.1 (inside the range)
    new_lp = torch.log(torch.tensor([1.5, 0.5, 1.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = ppo_loss(**ppo_inputs(new_lp, adv), clip_coef=0.2)
    loss.backward()
    g = new_lp.grad
    assert g[0] == 0 and g[1] == 0
    assert g[2] == pytest.approx(
        1.5 / 4
    )  # -A ρ / N with A = -1 and g[3] == pytest.approx(-1.1 / 4)
    # clip_fraction counts |ρ - 1| > ε: 3 of 4
    assert stats["clip_fraction"] == pytest.approx(0.75)
    # per-sample max(-Aρ, -A clip(ρ)): -1.2, 0.8, 1.5, -1.1
    assert stats["policy_loss"] == pytest.approx((-1.2 + 0.8 + 1.5 - 1.1) / 4, abs=1e-6)


def test_ppo_approx_kl_is_the_ratio_minus_one_minus_log_ratio_estimator():
    new_lp = torch.tensor([0.1, -0.2])
    _, stats = ppo_loss(**ppo_inputs(new_lp, torch.zeros(2)))
    expected = ((new_lp.exp() - 1) - new_lp).mean()
    assert stats["approx_kl"] == pytest.approx(expected.item())
    assert stats["approx_kl"] > 0


def test_ppo_value_clipping():
    kw = ppo_inputs(torch.zeros(1), torch.zeros(1))
    # old V = 0, new V = 1, target 2, ε = 0.2: unclipped (1-2)² = 1, clipped (0.2-2)² = 3.24.
    kw.update(new_values=torch.tensor([1.0], requires_grad=True), returns=torch.tensor([2.0]))
    loss, stats = ppo_loss(**kw, clip_coef=0.2, vf_coef=1.0)
    assert stats["value_loss"] == pytest.approx(0.5 * 3.24)
    loss.backward()
    assert kw["new_values"].grad.item() == 0  # the clipped branch is constant in V
    _, stats = ppo_loss(**kw, clip_coef=0.2, clip_vloss=False)
    assert stats["value_loss"] == pytest.approx(0.5)
    # when the unclipped error is the larger one, clipping changes nothing
    kw.update(returns=torch.tensor([-1.0]))
    _, clipped = ppo_loss(**kw, clip_coef=0.2)
    assert clipped["value_loss"] == pytest.approx(0.5 * 4.0)


def test_ppo_entropy_bonus_lowers_the_loss():
    kw = ppo_inputs(torch.zeros(2), torch.zeros(2))
    kw["entropy"] = torch.tensor([1.0, 3.0])
    loss, stats = ppo_loss(**kw, ent_coef=0.1)
    assert stats["entropy"] == pytest.approx(2.0)
    assert loss == pytest.approx(-0.2)


def test_objectives_differentiate_under_torch_func_grad():
    rewards, values, terminated, truncated, bootstrap, last_value = hand_case()

    def gae_sum(v):
        adv, _ = gae(rewards, v, terminated, truncated, bootstrap, last_value, 0.5, 0.5)
        return adv.sum()

    g_func = grad(gae_sum)(values)
    v = values.clone().requires_grad_()
    gae_sum(v).backward()
    torch.testing.assert_close(g_func, v.grad)

    def ppo(new_lp, new_v):
        return ppo_loss(
            new_lp,
            torch.zeros(4, 2, dtype=F64),
            values,
            new_v,
            values,
            rewards,
            torch.ones(4, 2, dtype=F64),
        )

    g_lp, g_v = grad(ppo, argnums=(0, 1), has_aux=True)(
        torch.full((4, 2), 0.1, dtype=F64), values + 0.05
    )[0]
    assert g_lp.abs().sum() > 0 and g_v.abs().sum() > 0
    g_vpg = grad(vpg_loss)(torch.zeros(4, 2, dtype=F64), values)
    torch.testing.assert_close(g_vpg, -values / 8)
