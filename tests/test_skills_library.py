"""``SkillLibrary``: round trips, deltas on a base, k-NN and metadata queries, damage handling."""

from __future__ import annotations

import json
import os
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from skills import (
    ArchSpec,
    SkillFileError,
    SkillLibrary,
    SkillLibraryError,
    SkillNotFoundError,
    init_params_from_skill,
)
from skills.extract import extract_task_skills, spec_for

BOX = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-0.5, 0.5, (2,), np.float32)
SMALL = {"s4d": {"d_state": 4}, "s5": {"d_state": 4}, "mamba": {"d_state": 4, "d_conv": 3}}


def policy(kind="gru", seed=0, obs=BOX, act=ACT, **kw) -> ssm.SequencePolicy:
    torch.manual_seed(seed)
    pol = ssm.SequencePolicy(
        obs, act, kind=kind, d_model=8, n_layers=2, encoder_hidden=16,
        layer_kwargs=SMALL.get(kind), **kw,
    )  # fmt: skip
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return pol


def policy_actions(pol, obs_seq: np.ndarray) -> np.ndarray:
    state, out = None, []
    with torch.no_grad():
        for o in obs_seq:
            res, state = pol.step(torch.as_tensor(o)[None], state)
            a = pol.mode(res)[0].numpy()
            out.append(np.clip(a, ACT.low, ACT.high) if a.dtype.kind == "f" else a)
    return np.stack(out)


def skill_actions(skill, obs_seq: np.ndarray, **kw) -> np.ndarray:
    state, out = None, []
    for o in obs_seq:
        a, state = skill.act(o, state, **kw)
        out.append(a)
    return np.stack(out)


@pytest.fixture
def lib(tmp_path) -> SkillLibrary:
    return SkillLibrary.create(tmp_path / "lib")


OBS = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)


@pytest.mark.parametrize("kind", ["mamba", "s4d", "s5", "gru", "lstm"])
def test_save_load_round_trip_gives_bit_identical_actions(lib, kind):
    pol = policy(kind)
    lib.add("s", pol, spec_for(pol), np.ones(4))
    reopened = SkillLibrary.open(lib.path)  # a fresh object reads everything from disk
    skill = reopened.get("s")
    got = skill_actions(skill, OBS)
    assert got.dtype == np.float32 and got.shape == (12, 2)
    np.testing.assert_array_equal(got, policy_actions(pol, OBS))
    for k, v in pol.state_dict().items():
        assert torch.equal(skill.params()[k], v)


def test_stochastic_actions_repeat_with_the_same_generator(lib):
    pol = policy()
    lib.add("s", pol, spec_for(pol), np.ones(4))
    skill = lib.get("s")
    a = skill_actions(skill, OBS, deterministic=False, generator=torch.Generator().manual_seed(5))
    b = skill_actions(skill, OBS, deterministic=False, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, skill_actions(skill, OBS))
    assert (np.abs(a) <= 0.5).all()  # clipped to the action bounds


def test_batched_and_discrete_acting(lib):
    pol = policy(act=gym.spaces.Discrete(4))
    lib.add("d", pol, spec_for(pol), np.ones(4))
    skill = lib.get("d")
    a, state = skill.act(OBS[:5])
    assert a.shape == (5,) and a.dtype == np.int64
    a1, _ = skill.act(OBS[0])
    assert a1.shape == () and int(a1) == int(a[0])
    with pytest.raises(ValueError, match="batch of 5"):
        skill.act(OBS[:2], state)
    with pytest.raises(ValueError, match="expects an observation of shape"):
        skill.act(np.zeros(4, np.float32))


def test_in_context_skill_acts_like_the_rollout_feeds_it(lib):
    pol = policy(in_context=True)
    lib.add("rl2", pol, spec_for(pol), np.ones(4))
    skill = lib.get("rl2")
    rewards = np.linspace(-1, 1, len(OBS))
    state, prev_a = None, torch.zeros(1, 2)
    pstate = None
    for t, o in enumerate(OBS):
        a, state = skill.act(o, state, reward=rewards[t - 1] if t else None)
        with torch.no_grad():
            r = torch.tensor([rewards[t - 1] if t else 0.0], dtype=torch.float32)
            out, pstate = pol.step(
                torch.as_tensor(o)[None], pstate, prev_action=prev_a, prev_reward=r,
                prev_done=torch.zeros(1, dtype=torch.bool),
            )  # fmt: skip
            prev_a = pol.mode(out)
        np.testing.assert_array_equal(a, np.clip(prev_a[0].numpy(), -0.5, 0.5))


def test_skills_on_a_base_store_only_what_differs(lib):
    base = policy(seed=1)
    spec = spec_for(base)
    lib.add_base("init", base, spec)
    tuned = policy(seed=1)
    with torch.no_grad():
        tuned.head.mean.weight.add_(1.0)
    info = lib.add("tuned", tuned, spec, np.ones(4), base="init")
    same = lib.add("same", base, spec, np.ones(4), base="init")
    assert same.file is None
    from safetensors.torch import load_file

    assert set(load_file(lib.path / info.file)) == {"head.mean.weight"}
    reopened = SkillLibrary.open(lib.path)
    np.testing.assert_array_equal(
        skill_actions(reopened.get("tuned"), OBS), policy_actions(tuned, OBS)
    )
    np.testing.assert_array_equal(
        skill_actions(reopened.get("same"), OBS), policy_actions(base, OBS)
    )
    with pytest.raises(SkillLibraryError, match="used by 2 skill"):
        lib.remove_base("init")


def test_knn_matches_brute_force(lib):
    rng = np.random.default_rng(0)
    pol = policy()
    spec = spec_for(pol)
    emb = rng.normal(size=(60, 6)).astype(np.float32)
    lib.add_many(
        [{"name": f"s{i}", "params": pol, "arch": spec, "embedding": e} for i, e in enumerate(emb)]
    )
    queries = rng.normal(size=(7, 6))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for q, got in zip(queries, lib.nearest(queries, k=5)):
        sims = unit @ (q / np.linalg.norm(q))
        want = np.argsort(-sims)[:5]
        assert [n for n, _ in got] == [f"s{i}" for i in want]
        np.testing.assert_allclose([s for _, s in got], sims[want], rtol=1e-5)
    single = lib.nearest(queries[0], k=100)
    assert len(single) == 60 and single[0] == lib.nearest(queries, k=1)[0][0]
    even = lib.nearest(queries[0], k=3, where=lambda info: int(info.name[1:]) % 2 == 0)
    assert all(int(n[1:]) % 2 == 0 for n, _ in even) and len(even) == 3
    with pytest.raises(ValueError, match="d=6"):
        lib.nearest(np.ones(5))
    with pytest.raises(ValueError, match="non-zero"):
        lib.nearest(np.zeros(6))


def test_metadata_queries(lib):
    pol = policy()
    spec = spec_for(pol)
    for i, (src, succ) in enumerate([("diayn", 0.2), ("diayn", 0.95), ("maml", 0.99)]):
        lib.add(
            f"s{i}", pol, spec, np.ones(3) + i, source=src, success=succ,
            budget={"env_steps": 1000 * i}, provenance={"seed": i}, metadata={"tag": "x"},
        )  # fmt: skip
    assert lib.find(source="diayn") == ["s0", "s1"]
    assert lib.find(source="diayn", success=lambda s: s > 0.9) == ["s1"]
    assert lib.find(where=lambda i: i.metadata["budget"]["env_steps"] >= 1000) == ["s1", "s2"]
    assert lib.find(returns=1.0) == []  # absent key never matches
    assert lib.find(name="s2", tag="x") == ["s2"]
    info = lib.info("s1")
    assert info.source == "diayn" and info.metadata["provenance"] == {"seed": 1}
    assert info.created and time.time() - _iso(info.created) < 600
    assert [n for n, _ in lib.nearest(np.ones(3), k=3, source="diayn")] == ["s0", "s1"]


def _iso(s: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(s).timestamp()


def test_add_validates_inputs(lib):
    pol = policy()
    spec = spec_for(pol)
    lib.add("a", pol, spec, np.ones(4))
    with pytest.raises(SkillLibraryError, match="already exists"):
        lib.add("a", pol, spec, np.ones(4))
    with pytest.raises(SkillLibraryError, match="embedding of size 3"):
        lib.add("b", pol, spec, np.ones(3))
    with pytest.raises(SkillLibraryError, match="non-zero"):
        lib.add("b", pol, spec, np.zeros(4))
    with pytest.raises(SkillLibraryError, match="do not fit the arch"):
        lib.add("b", policy("mamba"), spec, np.ones(4))
    with pytest.raises(SkillLibraryError, match="JSON-safe"):
        lib.add("b", pol, spec, np.ones(4), returns=float("nan"))
    bad = {k: v.clone() for k, v in pol.state_dict().items()}
    bad["value.bias"][0] = float("inf")
    with pytest.raises(SkillLibraryError, match="not finite"):
        lib.add("b", bad, spec, np.ones(4))
    with pytest.raises(SkillNotFoundError, match="no skill named 'zz'"):
        lib.get("zz")
    assert lib.list() == ["a"]
    assert len(list((lib.path / "skills").iterdir())) == 1  # failed adds leave no files


def test_replace_and_remove(lib):
    p1, p2 = policy(seed=1), policy(seed=2)
    spec = spec_for(p1)
    old = lib.add("a", p1, spec, np.ones(4))
    lib.add("a", p2, spec, np.ones(4), replace=True)
    assert not (lib.path / old.file).exists()
    np.testing.assert_array_equal(skill_actions(lib.get("a"), OBS), policy_actions(p2, OBS))
    new_file = lib.path / lib.info("a").file
    lib.remove("a")
    assert lib.list() == [] and not new_file.exists()
    with pytest.raises(SkillNotFoundError):
        lib.remove("a")


def test_missing_or_corrupt_tensor_file_names_it_and_spares_the_rest(lib):
    pol = policy()
    spec = spec_for(pol)
    a = lib.add("a", pol, spec, np.ones(4))
    b = lib.add("b", pol, spec, np.ones(4))
    os.remove(lib.path / a.file)
    with pytest.raises(SkillFileError, match=a.file.split("/")[1]) as e:
        lib.get("a")
    assert e.value.path == lib.path / a.file and "missing" in str(e.value)
    data = bytearray((lib.path / b.file).read_bytes())
    data[-3] ^= 0xFF
    (lib.path / b.file).write_bytes(bytes(data))
    with pytest.raises(SkillFileError, match="checksum"):
        lib.get("b")
    lib.add("c", pol, spec, np.ones(4))
    lib.get("c")  # the rest stays usable
    assert set(lib.verify()) == {"a", "b"}


def test_missing_manifest_and_newer_schema_are_clear(tmp_path, lib):
    with pytest.raises(SkillFileError, match="manifest.json is missing"):
        SkillLibrary.open(tmp_path / "nowhere")
    raw = json.loads(lib.manifest_path.read_text())
    raw["schema_version"] = 99
    lib.manifest_path.write_text(json.dumps(raw))
    with pytest.raises(SkillFileError, match="newer than this code"):
        SkillLibrary.open(lib.path)


def test_a_damaged_entry_leaves_the_others_usable(lib):
    pol = policy()
    spec = spec_for(pol)
    lib.add("a", pol, spec, np.ones(4))
    lib.add("b", pol, spec, np.ones(4))
    raw = json.loads(lib.manifest_path.read_text())
    raw["skills"]["a"]["embedding"] = "not base64!"
    lib.manifest_path.write_text(json.dumps(raw))
    reopened = SkillLibrary.open(lib.path)
    assert reopened.list() == ["b"] and "a" in reopened.problems()
    with pytest.raises(SkillLibraryError, match="manifest.json"):
        reopened.get("a")
    reopened.get("b")


def test_other_processes_changes_are_seen(lib):
    pol = policy()
    other = SkillLibrary.open(lib.path)
    lib.add("a", pol, spec_for(pol), np.ones(4))
    assert other.list() == ["a"]  # re-read because the manifest changed on disk


def test_reading_and_writing_leave_the_global_rng_alone(lib):
    pol = policy("s5")
    torch.manual_seed(7)
    want = torch.rand(2)
    torch.manual_seed(7)
    lib.add("a", pol, spec_for(pol), np.ones(4))
    SkillLibrary.open(lib.path).get("a").act(OBS[0])
    assert torch.equal(torch.rand(2), want)


def test_init_params_from_skill_and_task_extraction(lib):
    from metarl import make_family

    family = make_family("nav2d")
    tasks = family.sample(3, seed=0)
    meta = policy(obs=family.observation_space, act=family.action_space)
    adapted = []
    for i in range(3):
        p = {k: v.clone() for k, v in meta.named_parameters()}
        p["head.mean.bias"] = p["head.mean.bias"] + i + 1
        adapted.append(p)
    infos = extract_task_skills(lib, meta, tasks, adapted, base_name="meta-init", returns=[1, 2, 3])
    assert [i.name for i in infos] == [f"task/nav2d/train#{t.index}" for t in tasks]
    assert infos[0].metadata["provenance"]["task"] == tasks[0].to_dict()
    np.testing.assert_allclose(infos[1].embedding, tasks[1].param("goal"))
    # nearest task by goal position
    assert lib.nearest(np.asarray(tasks[2].param("goal")), k=1)[0][0] == infos[2].name
    skill = lib.get(infos[1].name)
    fresh = policy(seed=9, obs=family.observation_space, act=family.action_space)
    init = init_params_from_skill(skill, fresh)
    assert set(init) == {n for n, _ in fresh.named_parameters()}
    assert torch.equal(init["head.mean.bias"], adapted[1]["head.mean.bias"])


def test_collect_garbage_removes_orphans_only(lib):
    pol = policy()
    info = lib.add("a", pol, spec_for(pol), np.ones(4))
    orphan = lib.path / "skills" / ("0" * 32 + ".safetensors")
    orphan.write_bytes(b"junk")
    assert lib.collect_garbage(min_age_s=3600) == []  # too young: a writer may be in flight
    assert lib.collect_garbage(min_age_s=0) == [orphan]
    assert (lib.path / info.file).exists()


def test_arch_spec_is_stored_once_and_json(lib):
    pol = policy()
    spec = spec_for(pol)
    lib.add_many(
        [{"name": f"s{i}", "params": pol, "arch": spec, "embedding": np.ones(2)} for i in range(5)]
    )
    raw = json.loads(lib.manifest_path.read_text())
    assert raw["schema_version"] == 1 and raw["format"] == "skill-library"
    assert list(raw["archs"]) == [spec.spec_id()]
    assert ArchSpec.from_json(raw["archs"][spec.spec_id()]) == spec
