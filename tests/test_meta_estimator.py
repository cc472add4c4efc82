"""The inner-loop estimator: on a bandit, where every support sample can be enumerated with its
probability, the LVC surrogate's expected meta-gradient equals the analytic meta-gradient of the
expected adapted return; the plain VPG surrogate's does not (it lacks the score-function term).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad

from metarl.meta import MAML, TaskBatch
from metarl.meta import functional as F
from metarl.meta.testing import tiny_policy
from metarl.objectives import policy_evaluate
from metarl.trajectory import Trajectory

ALPHA = 0.5
MEANS = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)  # expected reward of each arm
BASELINE = 0.4  # any constant baseline keeps the estimator unbiased


def one_pull(policy, arm: int) -> Trajectory:
    """A one-step episode pulling ``arm`` with reward equal to its mean (the estimator is linear
    in the reward, so the mean reward gives the expectation over rewards too)."""
    ones = torch.ones(1, 1, dtype=torch.bool)
    zeros = torch.zeros(1, 1, dtype=torch.float64)
    traj = Trajectory(
        obs=torch.zeros(1, 1, 1, dtype=torch.float64),
        actions=torch.tensor([[arm]]),
        rewards=MEANS[arm].reshape(1, 1),
        terminated=ones,
        truncated=~ones,
        log_probs=zeros,
        values=zeros,
        dist_params=torch.zeros(1, 1, 3, dtype=torch.float64),
        success=zeros,
        resets=ones,
        prev_actions=torch.zeros(1, 1, dtype=torch.int64),
        prev_rewards=zeros,
        prev_dones=~ones,
        trial_ends=ones,
        bootstrap_values=zeros,
        last_value=torch.zeros(1, dtype=torch.float64),
        start_returns=torch.zeros(1, dtype=torch.float64),
        task_ids=torch.zeros(1, dtype=torch.int64),
        initial_state=policy.initial_state(1),
    )
    with torch.no_grad():  # behaviour log-probs and distribution, as a rollout records them
        ev = policy_evaluate(policy, None, traj)
    traj.log_probs, traj.dist_params = ev.log_probs, ev.dist_params
    return traj


def arm_log_probs(policy, params):
    obs = torch.zeros(1, 1, 1, dtype=torch.float64)
    out, _ = functional_call(policy, params, (obs,), {"resets": torch.ones(1, 1, dtype=torch.bool)})
    return out.dist_params[0, 0]  # (3,) log π(a)


def expected_meta_gradient(objective: str):
    """``E_a[∇_θ v·φ(θ, a)]`` by enumeration, and the analytic ``v + α ∇²J(θ) v``."""
    policy, _ = tiny_policy("gru", "bandit", k=3, horizon=1)
    learner = MAML(policy, inner_lr=ALPHA, inner_steps=1, inner_objective=objective)
    theta = learner.params()
    gen = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
    probs = arm_log_probs(policy, theta).exp()
    expected = F.zeros_like(theta)
    for arm in range(3):
        traj = one_pull(policy, arm)
        batch = TaskBatch(traj, traj.rewards - BASELINE, traj.rewards)
        g = grad(lambda p, b=batch: F.dot(v, learner.adapt(p, b)))(theta)
        expected = F.add(expected, g, float(probs[arm]))

    def expected_return(p):
        return (arm_log_probs(policy, p).exp() * MEANS).sum()

    # φ = θ + α ∇J(θ) in expectation, so d(v·φ)/dθ = v + α ∇²J(θ) v exactly.
    analytic = F.add(v, F.hvp(expected_return, theta, v), ALPHA)
    return expected, analytic


def relative_error(a, b) -> float:
    return float(F.sq_norm(F.sub(a, b)).sqrt() / F.sq_norm(b).sqrt())


def test_lvc_inner_surrogate_gives_the_exact_expected_meta_gradient():
    expected, analytic = expected_meta_gradient("lvc")
    for name in analytic:
        torch.testing.assert_close(expected[name], analytic[name], rtol=1e-9, atol=1e-12)


def test_ppo_inner_surrogate_equals_lvc_at_the_sampling_parameters():
    expected, analytic = expected_meta_gradient("ppo")
    assert relative_error(expected, analytic) < 1e-10


def test_plain_vpg_inner_surrogate_is_biased_without_the_score_function_term():
    expected, analytic = expected_meta_gradient("vpg")
    # the curvature part differs; ‖α (H_vpg - H) v‖ is a visible share of the whole gradient
    assert relative_error(expected, analytic) > 1e-3
    hess_part = F.sub(analytic, expected)
    assert float(F.sq_norm(hess_part).sqrt()) > 1e-4


@pytest.mark.parametrize("objective", ["lvc", "vpg"])
def test_first_order_adaptation_step_is_the_policy_gradient(objective):
    """All surrogates agree on the first derivative: φ - θ = α Â ∇log π(a)."""
    policy, _ = tiny_policy("gru", "bandit", k=3, horizon=1)
    learner = MAML(policy, inner_lr=ALPHA, inner_steps=1, inner_objective=objective)
    theta = learner.params()
    traj = one_pull(policy, 1)
    batch = TaskBatch(traj, traj.rewards - BASELINE, traj.rewards)
    phi = learner.adapt(theta, batch)
    score = grad(lambda p: arm_log_probs(policy, p)[1])(theta)
    for k in theta:
        torch.testing.assert_close(
            phi[k] - theta[k], ALPHA * float(MEANS[1] - BASELINE) * score[k], rtol=1e-9, atol=1e-12
        )
