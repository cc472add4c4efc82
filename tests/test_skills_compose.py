"""Options in sequence, the hierarchical skill selector (and training it with PPO)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from metarl.ppo import PPOConfig, train_ppo
from skills import Option, OptionRunner, SkillLibrary, SkillSelector
from skills.envs import PointEnv
from skills.extract import spec_for
from skills.hierarchy import SkillSelectionEnv, make_selection_vec_env

ACT = PointEnv.action_space


def constant_skill(lib: SkillLibrary, name: str, direction) -> None:
    """A skill that always moves by ``direction`` (zero head weights, a bias)."""
    torch.manual_seed(len(lib.list()))
    pol = ssm.SequencePolicy(PointEnv.observation_space, ACT, kind="gru", d_model=4, n_layers=1)
    with torch.no_grad():
        pol.head.mean.weight.zero_()
        pol.head.mean.bias.copy_(torch.as_tensor(direction))
    lib.add(name, pol, spec_for(pol), np.asarray(direction) + 1e-3)


@pytest.fixture
def lib(tmp_path) -> SkillLibrary:
    lib = SkillLibrary.create(tmp_path / "lib")
    constant_skill(lib, "right", [0.1, 0.0])
    constant_skill(lib, "up", [0.0, 0.1])
    constant_skill(lib, "left", [-0.1, 0.0])
    return lib


def test_options_run_in_sequence_with_duration_and_predicate(lib):
    env = PointEnv()
    runner = OptionRunner(
        [
            Option(lib.get("right"), until=lambda o: o[0] >= 0.3 - 1e-6),
            Option(lib.get("up"), duration=2),
            Option(lib.get("left"), duration=10, until=lambda o: o[0] <= 0.05),
        ]
    )
    obs, _ = env.reset()
    path = [obs]
    while (action := runner.act(obs)) is not None:
        obs, *_ = env.step(action)
        path.append(obs)
    assert runner.done and runner.trace == [(0, 3), (1, 2), (2, 3)]
    np.testing.assert_allclose(path[-1], [0.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(path[3], [0.3, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="needs a duration"):
        Option(lib.get("up"))


def _controller(n: int) -> ssm.SequencePolicy:
    torch.manual_seed(0)
    return ssm.SequencePolicy(
        PointEnv.observation_space, gym.spaces.Discrete(n), kind="gru", d_model=8, n_layers=1
    )


def test_selector_chooses_every_k_steps_and_matches_the_semi_mdp(lib):
    skills = [lib.get(n) for n in lib.list()]
    ctrl = _controller(len(skills))
    k = 3
    selector = SkillSelector(ctrl, skills, k)
    assert {id(p) for p in selector.parameters()} == {id(p) for p in ctrl.parameters()}

    env = PointEnv()
    obs, _ = env.reset()
    state, decided, choices, flat_obs = None, [], set(), [obs]
    gen = torch.Generator().manual_seed(3)  # sampled choices: the same draws on both sides
    for _ in range(4 * k):
        a, state, info = selector.act(torch.as_tensor(obs)[None], state, generator=gen)
        decided.append(bool(info["decided"][0]))
        choices.add(int(info["choice"][0]))
        obs, *_ = env.step(a[0].numpy())
        flat_obs.append(obs)
    assert decided == [t % k == 0 for t in range(4 * k)]
    assert len(choices) > 1  # the comparison below covers switching skills

    smdp = SkillSelectionEnv(gym.wrappers.TimeLimit(PointEnv(), 100), skills, k)
    obs, _ = smdp.reset()
    cstate = None
    gen = torch.Generator().manual_seed(3)
    for j in range(4):
        out, cstate = ctrl.step(torch.as_tensor(obs)[None], cstate)
        obs, _, _, _, info = smdp.step(int(ctrl.sample(out, gen)[0]))
        assert info["skill_steps"] == k
        np.testing.assert_array_equal(obs, flat_obs[(j + 1) * k])


def test_selector_resets_rows_at_episode_start(lib):
    skills = [lib.get(n) for n in lib.list()]
    selector = SkillSelector(_controller(len(skills)), skills, k=5)
    obs = torch.zeros(2, 2)
    _, state, _ = selector.act(obs, None)
    _, state, info = selector.act(obs, state, reset=torch.tensor([True, False]))
    assert info["decided"].tolist() == [True, False]


def test_controller_learns_to_pick_the_rewarding_skill_with_ppo(lib):
    """Reward = x-displacement: PPO on the semi-MDP must learn to choose "right"."""

    class RightwardReward(gym.Wrapper):
        def step(self, action):
            before = self.env.unwrapped.pos[0]
            obs, _, term, trunc, info = self.env.step(action)
            return obs, float(self.env.unwrapped.pos[0] - before), term, trunc, info

    skills = [lib.get(n) for n in ("left", "up", "right")]

    def make_env():
        return gym.wrappers.TimeLimit(RightwardReward(PointEnv()), 24)

    envs = make_selection_vec_env(make_env, skills, k=4, num_envs=4)
    ctrl = _controller(len(skills))
    cfg = PPOConfig(
        total_steps=1536, num_envs=4, num_steps=16, num_minibatches=2, learning_rate=3e-3, seed=1
    )
    train_ppo(ctrl, envs, cfg)
    with torch.no_grad():
        out, _ = ctrl.step(torch.zeros(1, 2), None)
    probs = out.dist_params.exp()[0]
    assert int(probs.argmax()) == 2 and float(probs[2]) > 0.6, probs
