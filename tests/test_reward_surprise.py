"""The reward-surprise drift stream (continual.reward_surprise): its value checked by hand on
linear data, the forgetting, the state, a switch of reward function against a stationary
mixture, and the refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from continual.reward_surprise import RewardSurprise

BOX1 = gym.spaces.Box(-np.inf, np.inf, (1,))
ACT1 = gym.spaces.Box(-1.0, 1.0, (1,))


def batch(obs, actions, rewards):
    """A (T, 1) trajectory stand-in: what the model reads (obs, actions, rewards, T, B)."""
    obs = torch.as_tensor(obs, dtype=torch.float32).reshape(-1, 1, 1)
    actions = torch.as_tensor(actions, dtype=torch.float32).reshape(-1, 1, 1)
    rewards = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1, 1)
    return SimpleNamespace(obs=obs, actions=actions, rewards=rewards, T=rewards.shape[0], B=1)


def test_the_value_is_the_log_ratio_of_the_new_prediction_error_to_the_fit_by_hand():
    model = RewardSurprise(BOX1, ACT1, features="linear", forget=0.5)
    x1, a1 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, -0.5, 0.5, -0.5])
    r1 = 2 * x1 + 1 + np.array([0.1, -0.1, -0.1, 0.1])
    assert math.isnan(model.update(batch(x1, a1, r1)))  # nothing fit yet
    # by hand: least squares of r1 on [1, x, a], its mean squared residual, then the error on
    # the next batch, whose rewards are shifted by 1
    X1 = np.stack([np.ones(4), x1, a1], 1)
    w, *_ = np.linalg.lstsq(X1, r1, rcond=None)
    fit = np.mean((X1 @ w - r1) ** 2)
    x2, a2 = np.array([0.5, 1.5, 2.5]), np.array([0.2, 0.0, -0.2])
    r2 = 2 * x2 + 2
    X2 = np.stack([np.ones(3), x2, a2], 1)
    pred = np.mean((X2 @ w - r2) ** 2)
    expected = math.log(pred) - math.log(fit)
    assert model.update(batch(x2, a2, r2)) == pytest.approx(expected, rel=1e-4)
    # the statistics now hold 0.5 x the first batch + the second
    X = np.concatenate([X1, X2])
    weights = np.array([0.5] * 4 + [1.0] * 3)
    assert np.allclose(model._A.numpy(), (X * weights[:, None]).T @ X)
    assert float(model._n) == pytest.approx(0.5 * 4 + 3)


def test_actions_enter_clipped_to_the_box_and_discrete_actions_one_hot():
    model = RewardSurprise(BOX1, ACT1, features="linear")
    phi, _ = model.design(batch([0.0, 0.0], [5.0, -7.0], [0.0, 0.0]))
    assert phi[:, 2].tolist() == [1.0, -1.0]
    discrete = RewardSurprise(BOX1, gym.spaces.Discrete(3), features="quadratic")
    traj = SimpleNamespace(
        obs=torch.zeros(2, 1, 1),
        actions=torch.tensor([[2], [0]]),
        rewards=torch.zeros(2, 1),
        T=2,
        B=1,
    )
    phi, _ = discrete.design(traj)
    assert phi.shape == (2, 1 + 4 + 10)
    assert phi[:, 2:5].tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def nav_batch(rng, goals, n_tasks=8, steps=20):
    """nav2d-like episodes of a noisy policy that heads for each task's goal g from the origin
    (as adapted policies do), reward −‖x' − g‖ after the clipped step."""
    idx = rng.integers(len(goals), size=n_tasks)
    obs, acts, rews = [], [], []
    for g in goals[idx]:
        x, xs, as_, rs = np.zeros(2), [], [], []
        for _ in range(steps):
            a = 0.3 * (g - x) + rng.normal(0, 0.05, size=2)
            xs.append(x)
            as_.append(a)
            x = x + np.clip(a, -0.1, 0.1)
            rs.append(-np.linalg.norm(x - g))
        obs.append(np.array(xs))
        acts.append(np.array(as_))
        rews.append(np.array(rs))
    t = lambda v: torch.as_tensor(np.stack(v, 1), dtype=torch.float32)  # noqa: E731
    return SimpleNamespace(obs=t(obs), actions=t(acts), rewards=t(rews), T=steps, B=n_tasks)


@pytest.mark.parametrize("seed", range(5))
def test_a_new_reward_function_raises_the_surprise_far_above_a_stationary_mixture(seed):
    rng = np.random.default_rng(seed)
    box2 = gym.spaces.Box(-np.inf, np.inf, (2,))
    act2 = gym.spaces.Box(-0.1, 0.1, (2,))
    model = RewardSurprise(box2, act2, forget=0.8)
    south_west = rng.uniform([-0.5, -0.5], [-0.05, -0.05], size=(40, 2))
    north_west = rng.uniform([-0.5, 0.05], [-0.05, 0.5], size=(40, 2))
    values = [model.update(nav_batch(rng, south_west, n_tasks=16)) for _ in range(15)]
    switch = model.update(nav_batch(rng, north_west, n_tasks=16))
    within = np.array(values[5:])
    assert np.abs(within).max() < 0.5
    assert switch > within.max() + 0.6
    model.reset()
    assert math.isnan(model.update(nav_batch(rng, north_west)))  # a fresh fit after a reset


def test_the_state_round_trips_and_the_next_value_is_bit_identical():
    rng = np.random.default_rng(1)
    box2 = gym.spaces.Box(-np.inf, np.inf, (2,))
    act2 = gym.spaces.Box(-0.1, 0.1, (2,))
    goals = rng.uniform(-0.5, 0.5, size=(10, 2))
    a = RewardSurprise(box2, act2)
    for _ in range(3):
        a.update(nav_batch(rng, goals))
    b = RewardSurprise(box2, act2)
    b.load_state_dict(a.state_dict())
    nxt = nav_batch(rng, goals)
    assert a.update(nxt) == b.update(nxt)
    with pytest.raises(ValueError, match="this model is"):
        RewardSurprise(box2, act2, forget=0.5).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="schema_version"):
        b.load_state_dict({"A": 1})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"observation_space": gym.spaces.Box(0, 1, (64, 64, 3))}, "reward_features=linear"),
        ({"observation_space": gym.spaces.MultiBinary(3)}, "Box or Discrete observation"),
        ({"forget": 1.0}, r"reward_forget must be in \[0, 1\)"),
        ({"features": "cubic"}, "'quadratic' or 'linear'"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    args = {"observation_space": BOX1, "action_space": ACT1, **kwargs}
    with pytest.raises(ValueError, match=message):
        RewardSurprise(**args)
