"""metarl.load(run_dir): any run's policy as an agent that acts, from the checkpoint's policy
record (spec + weights), never from code in the run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import metarl
from metarl import runner
from metarl.config import load_config
from metarl.run_dir import CheckpointError, RunDir
from metarl.train_config import build_family

COMMON = [
    "policy.kind=gru",
    "policy.d_model=8",
    "policy.encoder_hidden=16",
    "policy.n_layers=1",
    "eval.tasks=2",
    "logging.wandb=disabled",
    "logging.progress=false",
    "run.threads=1",
]


def train(tmp_path, *extra):
    cfg = load_config(runner.TrainConfig, None, [*COMMON, f"run.root={tmp_path}", *extra])
    return runner.train(cfg)


def test_a_ppo_run_acts_like_its_checkpointed_policy(tmp_path):
    run = train(
        tmp_path,
        "algo=ppo",
        "family=nav2d",
        "family_kwargs={max_episode_steps: 10}",
        "ppo.total_steps=80",
        "ppo.num_envs=2",
        "ppo.num_steps=20",
        "ppo.num_minibatches=1",
    )
    agent = metarl.load(run.path)
    assert agent.kind == "train" and agent.global_step == 80 and not agent.in_context
    # the same weights as the trainer's own state, and the same greedy actions
    state = run.load_checkpoint("latest")["trainer"]["policy"]
    for k, v in agent.policy.state_dict().items():
        assert torch.equal(v, state[k])
    cfg = run.load_config(runner.TrainConfig)
    family = build_family(cfg)
    env = family.make_env(family.sample(1, "test", seed=3)[0], seed=0)
    obs, _ = env.reset(seed=0)
    h, h_batch = None, None
    for _ in range(5):
        action, h = agent.act(obs, h)
        batch, h_batch = agent.act(np.stack([obs, obs]), h_batch)
        assert action.shape == (2,) and batch.shape == (2, 2)
        np.testing.assert_allclose(batch[0], action, rtol=1e-5, atol=1e-6)  # batch-size BLAS
        obs, *_ = env.step(action)
    # episode_start zeroes the state of that env only
    fresh, _ = agent.act(np.stack([obs, obs]), h_batch, episode_start=[True, False])
    first, _ = agent.act(obs, None)
    np.testing.assert_allclose(fresh[0], first, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected an observation of shape \(2,\)"):
        agent.act(np.zeros(3), None)
    # an old checkpoint without the record still loads (rebuilt from the config)
    ckpt = run.checkpoints()[-1]
    old = torch.load(ckpt, weights_only=True)
    del old["policy"]
    torch.save(old, ckpt)
    again = metarl.load(run.path)
    np.testing.assert_array_equal(again.act(obs, None)[0], first)


def test_an_rl2_run_acts_in_context(tmp_path):
    run = train(
        tmp_path,
        "algo=rl2",
        "family=bandit",
        "family_kwargs={k: 3, horizon: 5}",
        "rl2.total_steps=40",
        "rl2.num_envs=4",
        "rl2.num_minibatches=2",
    )
    agent = metarl.load(run.path)
    assert agent.in_context
    a0, h = agent.act(np.zeros(1, np.float32), None)
    a1, h = agent.act(np.zeros(1, np.float32), h, prev_action=a0, prev_reward=1.0)
    assert a0.shape == () and 0 <= int(a1) < 3


def test_a_sequence_run_loads_with_the_curriculum_observation(tmp_path):
    from continual.config import SequenceConfig
    from continual.sequence import run_sequence

    cfg = load_config(
        SequenceConfig,
        "experiments/configs/sequence_meta_quick.yaml",
        [
            f"run.root={tmp_path}",
            "stage_steps=400",
            "max_stages=2",
            "eval.episodes=1",
            "logging.wandb=disabled",
            "logging.progress=false",
            "policy.d_model=8",
            "policy.n_layers=1",
            "policy.kind=gru",
            "policy.encoder_hidden=16",
        ],
    )
    result = run_sequence(cfg)
    agent = metarl.load(result.run.path)
    assert agent.kind == "sequence"
    live = result.run.load_checkpoint("latest")["policy"]["state"]
    for k, v in agent.policy.state_dict().items():
        assert torch.equal(v, live[k])
    obs_shape = tuple(agent.spec["observation"]["shape"])
    action, _ = agent.act(np.zeros(obs_shape, np.float32))
    assert action.shape == (2,)


def test_hostile_or_unsupported_run_directories_are_refused(tmp_path):
    run = train(
        tmp_path,
        "algo=ppo",
        "family=nav2d",
        "family_kwargs={max_episode_steps: 10}",
        "ppo.total_steps=40",
        "ppo.num_envs=2",
        "ppo.num_steps=20",
        "ppo.num_minibatches=1",
    )
    ckpt = run.checkpoints()[-1]
    state = torch.load(ckpt, weights_only=True)
    spec = json.loads(state["policy"]["spec"])
    spec["d_model"] = 10**9  # a spec that would allocate without bound
    state["policy"]["spec"] = json.dumps(spec)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="cannot be built"):
        metarl.load(run.path)
    state["policy"]["spec"] = "{not json"
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="not JSON"):
        metarl.load(run.path)
    pop = RunDir.create(tmp_path, "pop", {"algo": "mappo", "agents": []}, 1)
    with pytest.raises(CheckpointError, match="population"):
        metarl.load(pop.path)


def test_a_sequence_run_records_its_observation_layout_and_export_uses_it(tmp_path):
    """nav2d_quadrants appends a one-hot of the task entry: the run writes the layout, its sizes
    add up to the policy's observation, and an exported skill states it."""
    from continual.config import SequenceConfig
    from continual.sequence import run_sequence
    from skills import SkillLibrary
    from skills.export import main as export_main

    cfg = load_config(
        SequenceConfig,
        None,
        [
            f"run.root={tmp_path}",
            "curriculum=nav2d_quadrants",
            "max_stages=1",
            "stage_steps=160",
            "ppo.num_envs=4",
            "ppo.num_steps=20",
            "ppo.num_minibatches=2",
            "ppo.update_epochs=1",
            "policy.kind=gru",
            "policy.d_model=8",
            "policy.n_layers=1",
            "policy.encoder_hidden=8",
            "eval.episodes=1",
            "logging.wandb=disabled",
            "logging.progress=false",
        ],
    )
    run = run_sequence(cfg).run
    layout = json.loads((run.path / "observation_layout.json").read_text())
    assert [b["name"] for b in layout] == ["env", "task_onehot"]
    assert layout[0]["size"] == 2 and layout[1]["index_of"][0] == "north_east"
    agent = metarl.load(run.path)
    assert sum(b["size"] for b in layout) == agent.spec["observation"]["shape"][0]
    library = tmp_path / "lib"
    assert export_main([str(run.path), "--library", str(library)]) == 0
    (name,) = SkillLibrary.open(library).list()
    assert SkillLibrary.open(library).info(name).metadata["obs_layout"] == layout
