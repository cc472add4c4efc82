"""RL² trainer: trials, task resampling, trial-level credit assignment."""

from __future__ import annotations

import math

import pytest
import torch

import ssm
from metarl import gae, make_family
from metarl.backends import LocalCollector
from metarl.rl2 import RL2Config, evaluate_trials, train_rl2, trial_batch


def in_context_policy(family, kind="gru"):
    torch.manual_seed(0)
    return ssm.SequencePolicy(
        family.observation_space,
        family.action_space,
        kind=kind,
        d_model=16,
        n_layers=1,
        in_context=True,
    )


def test_rl2_needs_an_in_context_policy():
    family = make_family("bandit", horizon=10)
    policy = ssm.SequencePolicy(
        family.observation_space, family.action_space, kind="gru", d_model=8, n_layers=1
    )
    with pytest.raises(ValueError, match="in_context=True"):
        train_rl2(policy, family, RL2Config(num_envs=4, num_minibatches=2))


def test_trial_batch_is_one_whole_trial_of_fresh_tasks_per_env():
    family = make_family("nav2d")
    cfg = RL2Config(num_envs=4, num_minibatches=2, episodes_per_trial=2, seed=3)
    policy = in_context_policy(family)
    collector, gen = LocalCollector(policy, family), torch.Generator().manual_seed(0)
    a = trial_batch(family, collector, cfg, iteration=1, generator=gen)
    b = trial_batch(family, collector, cfg, iteration=2, generator=gen)
    goals_a, goals_b = (
        [t.param("goal") for t in family.sample(4, split="train", seed=3 * 1_000_003 + it)]
        for it in (1, 2)
    )
    assert a.T == 2 * family.max_episode_steps and a.B == 4
    # The state is reset only at the trial start; the first episode's end is not a trial end.
    assert a.resets[0].all() and not a.resets[1:].any()
    assert a.trial_ends[-1].all() and a.trial_ends[:-1].sum() == 0
    assert a.truncated[family.max_episode_steps - 1].all()  # episode 1 ends inside the trial
    assert goals_a != goals_b  # each iteration samples fresh training tasks
    assert torch.equal(b.resets[0], torch.ones(4, dtype=torch.bool))


def test_trial_level_gae_carries_credit_across_the_episodes_of_a_trial():
    """With the trial as the episode, an advantage in episode 1 sees episode 2's rewards."""
    T, B = 6, 1
    rewards = torch.zeros(T, B)
    rewards[5] = 1.0  # reward only in the second episode (steps 3..5)
    values = torch.zeros(T, B)
    trial_ends = torch.zeros(T, B, dtype=torch.bool)
    trial_ends[-1] = True
    no_cut = torch.zeros(T, B, dtype=torch.bool)
    adv, _ = gae(
        rewards, values, trial_ends, no_cut, torch.zeros(T, B), torch.zeros(B), gamma=1.0, lam=1.0
    )
    assert adv[0].item() == pytest.approx(1.0)  # step 0 (episode 1) is credited
    episode_end = no_cut.clone()
    episode_end[2] = True  # per-episode GAE would cut the credit at the episode boundary
    adv_ep, _ = gae(
        rewards,
        values,
        episode_end | trial_ends,
        no_cut,
        torch.zeros(T, B),
        torch.zeros(B),
        gamma=1.0,
        lam=1.0,
    )
    assert adv_ep[0].item() == 0.0


def test_train_rl2_runs_iterations_and_logs_finite_diagnostics():
    family = make_family("bandit", horizon=20)
    policy = in_context_policy(family)
    cfg = RL2Config(total_steps=8 * 20 * 3, num_envs=8, num_minibatches=2, update_epochs=2)
    history = train_rl2(policy, family, cfg)
    assert [r.global_step for r in history] == [160, 320, 480]
    for r in history:
        assert math.isfinite(r.policy_loss) and math.isfinite(r.value_loss)
        assert 0.0 <= r.episodic_return <= 20.0


def test_evaluate_trials_returns_per_task_arrays():
    family = make_family("bandit", horizon=15)
    policy = in_context_policy(family)
    tasks = family.sample(6, split="test", seed=1)
    ev = evaluate_trials(policy, family, tasks, episodes_per_trial=1, seed=0)
    assert ev["rewards"].shape == (6, 15) and ev["actions"].shape == (6, 15)
    assert ev["episode_returns"].shape == (6, 1)
    assert ((ev["actions"] >= 0) & (ev["actions"] < 5)).all()
