"""The population's batched games: role gathering, the PettingZoo wrapper, alive masks."""

from __future__ import annotations

import numpy as np
import pytest

from metarl.population.envs import MOVES, RoleGathering


def test_role_gathering_shapes_and_team_reward_needs_distinct_agents():
    env = RoleGathering(num_envs=2, n_agents=3, n_resources=3, max_steps=5)
    obs, alive = env.reset(seed=0)
    assert obs.shape == (2, 3, env.obs_dim) and env.obs_dim == 3 + 2 * 3 + 3 * 2
    assert alive.all()
    # copy 0: every agent on a different resource; copy 1: all three on resource 0
    env.pos[0] = env.resources
    env.pos[1] = env.resources[[0, 0, 0]]
    step = env.step(np.zeros((2, 3), np.int64))  # no-op
    np.testing.assert_allclose(step.rewards[0], 1.0)
    np.testing.assert_allclose(step.rewards[1], 1 / 3)
    np.testing.assert_array_equal(env.roles()[0], [0, 1, 2])
    np.testing.assert_array_equal(env.roles()[1], [0, 0, 0])


def test_role_gathering_moves_truncates_and_observes_relative_positions():
    env = RoleGathering(num_envs=1, n_agents=2, n_resources=2, max_steps=3, spawn=0.0)
    obs, _ = env.reset(seed=1)
    np.testing.assert_allclose(obs[0, 0, 2:4], env.resources[0])  # resource 0 - own position
    for t in range(3):
        step = env.step(np.array([[2, 4]]))  # +x, +y
        if t < 2:
            assert step.alive.all() and not step.truncated.any()
    assert step.truncated.all() and not step.alive.any() and not step.terminated.any()
    np.testing.assert_allclose(env.pos[0, 0], 3 * 0.1 * MOVES[2], atol=1e-6)
    assert step.obs[0].any(axis=-1).all()  # final observations for bootstrapping


def test_role_gathering_deaths_and_variable_agent_counts_mask_slots():
    env = RoleGathering(num_envs=64, n_agents=4, n_resources=3, death_rate=0.3, min_agents=1)
    obs, alive = env.reset(seed=3)
    counts = alive.sum(1)
    assert counts.min() >= 1 and counts.max() <= 4 and len(set(counts.tolist())) > 1
    assert (obs[~alive] == 0).all()
    died = np.zeros_like(alive)
    for _ in range(5):
        before = env.alive.copy()
        step = env.step(np.ones((64, 4), np.int64))
        assert not (step.terminated & ~before).any()  # only agents that acted can die
        assert (step.rewards[~before] == 0).all()  # dead slots earn nothing
        assert not (step.alive & ~before).any()  # nobody comes back
        died |= step.terminated
    assert died.any()


def test_role_gathering_rejects_overlapping_resources():
    with pytest.raises(ValueError, match="overlap"):
        RoleGathering(num_envs=1, n_resources=8, cover_radius=0.4)


def test_goto_expert_reaches_its_resource():
    env = RoleGathering(num_envs=3, n_agents=3, n_resources=3)
    obs, _ = env.reset(seed=0)
    for _ in range(env.max_steps - 1):
        actions = np.stack([env.goto_action(obs[:, i], i) for i in range(3)], 1)
        obs = env.step(actions).obs
    np.testing.assert_array_equal(env.roles(), np.tile([0, 1, 2], (3, 1)))


# -- PettingZoo --------------------------------------------------------------------------------

pytest.importorskip("mpe2")


def test_simple_spread_wrapper_shapes_and_episode_end():
    from metarl.population.pettingzoo_env import make_simple_spread

    env = make_simple_spread(num_envs=3, episode_len=4, N=3)
    obs, alive = env.reset(seed=0)
    assert (env.n_agents, env.obs_dim, env.n_actions, env.n_roles) == (3, 18, 5, 3)
    assert obs.shape == (3, 3, 18) and obs.dtype == np.float32 and alive.all()
    assert env.teams.tolist() == [0, 0, 0]
    for _ in range(4):
        step = env.step(np.full((3, 3), 1))
        assert step.obs.shape == (3, 3, 18) and step.rewards.shape == (3, 3)
    assert step.truncated.all() and not step.alive.any()
    assert env.roles().shape == (3, 3)
    env.close()


def test_simple_tag_pads_observations_and_splits_teams():
    from metarl.population.pettingzoo_env import make_simple_tag

    env = make_simple_tag(num_envs=2, episode_len=3)
    obs, alive = env.reset(seed=0)
    assert env.agent_names[-1] == "agent_0" and env.teams.tolist() == [0, 0, 0, 1]
    assert env.obs_sizes == [16, 16, 16, 14] and obs.shape == (2, 4, 16)
    assert (obs[:, 3, 14:] == 0).all()  # the prey's padding
    env.close()


class _DyingEnv:
    """A minimal PettingZoo parallel env: agent_1 dies after its second step."""

    def __init__(self):
        import gymnasium as gym

        self.possible_agents = ["agent_0", "agent_1", "agent_2"]
        self._obs = gym.spaces.Box(-1, 1, (2,), np.float32)
        self._act = gym.spaces.Discrete(3)
        self.agents: list[str] = []

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        return {a: np.full(2, 0.5, np.float32) for a in self.agents}, {}

    def step(self, actions):
        assert set(actions) == set(self.agents)
        self.t += 1
        obs = {a: np.full(2, self.t / 10, np.float32) for a in self.agents}
        rew = {a: 1.0 for a in self.agents}
        term = {a: a == "agent_1" and self.t == 2 for a in self.agents}
        trunc = {a: self.t == 4 for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, {a: {} for a in obs}

    def close(self):
        pass


def test_parallel_wrapper_masks_an_agent_that_leaves_mid_episode():
    from metarl.population.pettingzoo_env import ParallelEnvBatch

    env = ParallelEnvBatch(_DyingEnv, num_envs=2)
    obs, alive = env.reset(seed=0)
    assert alive.all()
    env.step(np.zeros((2, 3), np.int64))
    step = env.step(np.zeros((2, 3), np.int64))
    assert step.terminated[:, 1].all() and not step.terminated[:, [0, 2]].any()
    assert step.alive.tolist() == [[True, False, True]] * 2
    step = env.step(np.zeros((2, 3), np.int64))  # the dead agent's action is not sent
    assert (step.rewards[:, 1] == 0).all() and (step.obs[:, 1] == 0).all()
    step = env.step(np.zeros((2, 3), np.int64))
    assert step.truncated[:, [0, 2]].all() and not step.alive.any()
