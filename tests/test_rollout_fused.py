"""Rollout(fused_step=True): acting through the fused C++ policy step gives the trajectories of
the reference step to float rounding (off by default, so runs stay bit-identical)."""

from __future__ import annotations

import pytest
import torch

from metarl import Rollout, make_family
from ssm import SequencePolicy
from ssm.fast_step import FusedPolicyStep


@pytest.mark.parametrize("kind", ["s4d", "mamba", "gru"])
def test_fused_rollout_matches_the_reference(kind):
    family = make_family("nav2d", max_episode_steps=7)
    tasks = family.sample(4, "train", seed=0)
    torch.manual_seed(0)
    policy = SequencePolicy(
        family.observation_space, family.action_space, kind=kind, d_model=16, n_layers=2
    )
    if not FusedPolicyStep(policy).fused:
        pytest.skip("the fused policy step is not available here")
    trajs = []
    for fused in (False, True):
        envs = family.make_vector_env(tasks, seed=3)
        rollout = Rollout(
            policy, envs, generator=torch.Generator().manual_seed(5), fused_step=fused
        )
        trajs.append([rollout.collect(10), rollout.collect(10)])  # crosses episode resets
    for ref, got in zip(*trajs):
        for name in ("obs", "actions", "log_probs", "values", "rewards"):
            torch.testing.assert_close(
                getattr(got, name), getattr(ref, name), rtol=1e-4, atol=1e-5, msg=name
            )
        assert torch.equal(got.resets, ref.resets)


def test_ppo_fused_step_reaches_the_rollout():
    from metarl import PPOConfig, PPOTrainer

    family = make_family("nav2d", max_episode_steps=5)
    torch.manual_seed(0)
    policy = SequencePolicy(family.observation_space, family.action_space, kind="gru", d_model=8)
    config = PPOConfig(num_envs=2, num_steps=5, num_minibatches=1, total_steps=20, fused_step=True)
    trainer = PPOTrainer(policy, family.make_vector_env(family.sample(2, seed=0), seed=0), config)
    assert isinstance(trainer.source.rollout._stepper, FusedPolicyStep)
    trainer.step()  # trains through it (the stepper follows the optimiser's in-place updates)
    assert not isinstance(
        PPOTrainer(
            policy,
            family.make_vector_env(family.sample(2, seed=0), seed=0),
            PPOConfig(num_envs=2, num_steps=5, num_minibatches=1),
        ).source.rollout._stepper,
        FusedPolicyStep,
    )
