"""DIAYN: the discriminator reward, a training smoke run, and skills extracted into a library."""

from __future__ import annotations

import math

import numpy as np
import torch

import ssm
from metarl.ppo import PPOConfig
from skills import SkillLibrary, init_params_from_skill
from skills.diayn import (
    DIAYNConfig,
    Discriminator,
    extract_diayn_skills,
    make_diayn_policy,
    rollout_skills,
    train_diayn,
)
from skills.envs import PointEnv, make_point_vec_env


def test_discriminator_reward_is_log_q_minus_log_p_and_learns():
    disc = Discriminator(state_dim=2, n_skills=4, hidden=32, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 4, (512,), generator=g)
    centres = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    states = centres[z] + 0.1 * torch.randn(512, 2, generator=g)
    obs = torch.cat([states, torch.eye(4)[z]], dim=1)
    r = disc.intrinsic_reward(obs, obs, torch.zeros(512))
    log_q = torch.log_softmax(disc(states), -1)[torch.arange(512), z]
    torch.testing.assert_close(r, log_q + math.log(4))
    for _ in range(5):
        stats = disc.update({"obs": obs, "next_obs": obs, "actions": torch.zeros(512)})
    assert stats["disc_acc"] > 0.95
    assert disc.intrinsic_reward(obs, obs, torch.zeros(512)).mean() > r.mean()


def test_train_diayn_runs_with_the_project_ppo_and_a_curiosity_bonus():
    cfg = DIAYNConfig(
        n_skills=3,
        ppo=PPOConfig(total_steps=256, num_envs=4, num_steps=32, num_minibatches=2, seed=0),
        d_model=8,
        curiosity="rnd",
    )
    res = train_diayn(make_point_vec_env(4, max_episode_steps=10), cfg)
    assert len(res.history) == 2
    row = res.history[-1]
    for key in ("disc_loss", "disc_acc", "rnd_loss", "reward/diayn", "reward/rnd", "approx_kl"):
        assert key in row and math.isfinite(row[key]), key
    out = rollout_skills(res.policy, make_point_vec_env(4, max_episode_steps=10), 3, 2)
    assert out["final_states"].shape == (3, 2, 2)
    assert len(out["states"]) == 3 * 2 * 10 == len(out["state_skills"])


def test_extracted_skills_share_one_base_and_act_like_the_conditioned_policy(tmp_path):
    n = 4
    torch.manual_seed(0)
    cfg = DIAYNConfig(n_skills=n, d_model=8, kind="mamba", layer_kwargs={"d_state": 4})
    policy = make_diayn_policy(PointEnv.observation_space, PointEnv.action_space, cfg)
    lib = SkillLibrary.create(tmp_path / "lib")
    infos = extract_diayn_skills(
        lib, policy, n, embeddings=np.eye(n) + 0.1, budget={"env_steps": 0}
    )
    assert [i.name for i in infos] == [f"diayn/{z}" for z in range(n)]
    assert all(i.file is None and i.base == "diayn" for i in infos)
    assert lib.bases() == ["diayn"] and not (lib.path / "skills").exists()
    assert lib.nearest(np.eye(n)[2], k=1)[0][0] == "diayn/2"

    states = np.random.default_rng(0).uniform(-1, 1, size=(6, 2)).astype(np.float32)
    for z in (0, 3):
        skill = SkillLibrary.open(lib.path).get(f"diayn/{z}")
        code = np.broadcast_to(np.eye(n, dtype=np.float32)[z], (6, n))
        with torch.no_grad():
            want, _ = policy.step(torch.as_tensor(np.concatenate([states, code], 1)), None)
        got, _ = skill.act(states)  # a batch of 6 first steps
        np.testing.assert_array_equal(got, policy.mode(want).numpy())  # tanh head: in bounds

        # as an initialisation of a policy that never sees z: the code is folded into a bias
        plain = ssm.SequencePolicy(
            PointEnv.observation_space, PointEnv.action_space, kind="mamba", d_model=8,
            n_layers=1, layer_kwargs={"d_state": 4}, box_head="tanh",
        )  # fmt: skip
        plain.load_state_dict(init_params_from_skill(skill, plain))
        with torch.no_grad():
            folded, _ = plain.step(torch.as_tensor(states), None)
        torch.testing.assert_close(folded.dist_params, want.dist_params, atol=1e-6, rtol=1e-5)
