"""RND and ICM reward plugins, running statistics, and the vector-env reward wrappers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from skills.curiosity import ICM, RND, RewardPlugin, RunningMeanStd
from skills.envs import make_maze_vec_env, make_point_vec_env, maze_coverage, maze_layout
from skills.intrinsic import IntrinsicRewardVecEnv, RewardTerm, SkillConditionedVecEnv

MOVES = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [0.0, -0.1]])


def transitions(n: int, offset: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, 2, generator=g) + offset
    actions = torch.randint(0, 4, (n,), generator=g)
    return obs, obs + MOVES[actions], actions


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd((3,))
    data = np.random.default_rng(0).normal(2.0, 3.0, size=(500, 3))
    for chunk in np.array_split(data, 7):
        rms.update(torch.as_tensor(chunk))
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-4)


@pytest.mark.parametrize("make", [lambda: RND(2), lambda: ICM(2, n_actions=4)], ids=["rnd", "icm"])
def test_bonus_shapes_and_decrease_on_repeatedly_seen_states(make):
    plugin = make()
    assert isinstance(plugin, RewardPlugin)
    obs, nxt, act = transitions(512)
    r = plugin.intrinsic_reward(obs, nxt, act)
    assert r.shape == (512,) and r.dtype == torch.float32 and not r.requires_grad
    before = plugin.raw_reward(obs, nxt, act).mean()
    for _ in range(10):
        losses = plugin.update({"obs": obs, "next_obs": nxt, "actions": act})
    assert all(isinstance(v, float) for v in losses.values())
    after = plugin.raw_reward(obs, nxt, act).mean()
    novel = plugin.raw_reward(*transitions(512, offset=3.0, seed=1)).mean()
    assert after < 0.6 * before  # seen states become boring
    assert novel > 2 * after  # unseen ones stay interesting


def test_icm_for_continuous_actions_and_reward_normalisation():
    icm = ICM(3, action_dim=2)
    obs, nxt, act = torch.randn(64, 3), torch.randn(64, 3), torch.randn(64, 2)
    icm.update({"obs": obs, "next_obs": nxt, "actions": act})
    raw = icm.raw_reward(obs, nxt, act)
    normed = icm.intrinsic_reward(obs, nxt, act)
    scale = torch.sqrt(icm.reward_rms.var.float() + 1e-8)
    np.testing.assert_allclose(normed, raw / scale, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        ICM(3)


class EchoPlugin:
    """Reward = x of the next observation; records what update saw."""

    def __init__(self):
        self.batches = []

    def intrinsic_reward(self, obs, next_obs, actions):
        return next_obs[:, 0].double()

    def update(self, batch):
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return {"echo": 1.0}


def test_intrinsic_wrapper_adds_bonuses_on_the_true_next_observation():
    envs = make_point_vec_env(2, max_episode_steps=3)
    echo = EchoPlugin()
    wrapped = IntrinsicRewardVecEnv(envs, [RewardTerm("echo", echo, coef=2.0)], extrinsic_coef=1.0)
    assert wrapped.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    wrapped.reset(seed=0)
    step = np.array([[0.1, 0.0], [0.05, 0.0]], np.float32)
    for _ in range(3):
        obs, reward, term, trunc, info = wrapped.step(step)
    assert trunc.all()  # the last step ended the episodes: obs is the reset, not s'
    np.testing.assert_allclose(obs, 0.0)
    np.testing.assert_allclose(reward, 2.0 * np.array([0.3, 0.15]), rtol=1e-5)
    stats = wrapped.update_plugins()
    assert stats["echo"] == 1.0 and "reward/echo" in stats
    batch = echo.batches[0]
    assert batch["obs"].shape == (6, 2) and batch["actions"].shape == (6, 2)
    np.testing.assert_allclose(batch["next_obs"][-2:, 0], [0.3, 0.15], rtol=1e-5)
    assert wrapped.transitions()["obs"].shape == (0,)  # cleared


def test_skill_codes_are_fixed_per_episode_and_kept_in_final_obs():
    envs = SkillConditionedVecEnv(make_point_vec_env(3, max_episode_steps=4), n_skills=5, seed=0)
    assert envs.single_observation_space.shape == (7,)
    obs, _ = envs.reset(seed=0)
    codes = obs[:, 2:].argmax(1)
    np.testing.assert_array_equal(obs[:, 2:].sum(1), 1.0)
    seen_new = False
    for _ in range(12):
        nxt, _, term, trunc, info = envs.step(np.zeros((3, 2), np.float32))
        done = term | trunc
        for i in range(3):
            if done[i]:
                assert info["final_obs"][i][2:].argmax() == codes[i]  # old code on s'
                codes[i] = nxt[i, 2:].argmax()
                seen_new = True
            else:
                assert nxt[i, 2:].argmax() == codes[i]
    assert seen_new
    envs.fix_skills([4, 4, 1])
    obs, _ = envs.reset()
    assert obs[:, 2:].argmax(1).tolist() == [4, 4, 1]


def test_maze_is_a_perfect_maze_and_counts_coverage():
    walls = maze_layout(5, seed=0)
    assert walls.shape == (11, 11) and walls[0].all() and walls[:, -1].all()
    assert (~walls).sum() == 5 * 5 + 24  # cells plus the passages of a spanning tree
    envs = make_maze_vec_env(2, cells=5, max_episode_steps=10)
    envs.reset(seed=0)
    for _ in range(10):
        envs.step(np.array([1, 3]))
    visited, free = maze_coverage(envs)
    assert 1 < visited < free
