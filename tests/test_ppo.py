"""PPO training loop: it runs, logs finite diagnostics, stops on non-finite losses, and learns."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from metarl.ppo import PPOConfig, evaluate_returns, train_ppo


def cartpole(n: int) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "CartPole-v1",
        num_envs=n,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def small_policy(envs, kind="gru"):
    torch.manual_seed(0)
    return ssm.SequencePolicy(
        envs.single_observation_space, envs.single_action_space, kind=kind, d_model=16, n_layers=1
    )


def test_ppo_iterations_log_every_diagnostic_and_change_the_policy():
    envs = cartpole(4)
    policy = small_policy(envs)
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = PPOConfig(
        total_steps=4 * 32 * 3, num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2
    )
    rows = []
    history = train_ppo(policy, envs, cfg, log=rows.append)
    assert len(history) == 3 and rows == history
    assert [r.global_step for r in history] == [128, 256, 384]
    for r in history:
        for name in (
            "policy_loss",
            "value_loss",
            "entropy",
            "approx_kl",
            "clip_fraction",
            "explained_variance",
            "steps_per_second",
        ):
            assert math.isfinite(getattr(r, name)), name
        assert 0.0 <= r.clip_fraction <= 1.0
    assert history[-1].learning_rate < history[0].learning_rate  # annealed
    changed = [not torch.equal(a, b) for a, b in zip(before, policy.parameters())]
    assert all(changed)


def test_ppo_stops_on_a_non_finite_loss_and_names_it():
    envs = cartpole(2)
    policy = small_policy(envs)
    with torch.no_grad():
        policy.value.bias.fill_(float("nan"))
    cfg = PPOConfig(total_steps=64, num_envs=2, num_steps=32, num_minibatches=1)
    with pytest.raises(FloatingPointError, match="loss is not finite"):
        train_ppo(policy, envs, cfg)


def test_ppo_rejects_a_config_that_does_not_fit_the_envs():
    envs = cartpole(3)
    with pytest.raises(ValueError, match="num_envs"):
        train_ppo(small_policy(envs), envs, PPOConfig(num_envs=4))
    with pytest.raises(ValueError, match="num_minibatches must divide"):
        train_ppo(small_policy(envs), envs, PPOConfig(num_envs=3, num_minibatches=2))


@pytest.mark.slow
def test_ppo_mamba_policy_solves_cartpole():
    """The sanity run of experiments/ppo_cartpole.py: greedy return >= 475 within 150k steps."""
    envs = cartpole(8)
    torch.manual_seed(1)
    policy = ssm.SequencePolicy(
        envs.single_observation_space,
        envs.single_action_space,
        kind="mamba",
        d_model=64,
        n_layers=2,
    )
    train_ppo(policy, envs, PPOConfig(total_steps=150_000, seed=1))
    returns = evaluate_returns(policy, cartpole(4), episodes=20, seed=10_001)
    assert np.mean(returns) >= 475
