"""Task families: spaces, seeded sampling, splits, JSON specs, envs, vector envs and rewards."""

from __future__ import annotations

import functools
import importlib.util
import json
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from metarl.tasks import FAMILIES, MissingExtraError, Task, make_family

# spec -> (module it needs or None, constructor kwargs giving short episodes)
SPECS: dict[str, tuple[str | None, dict]] = {
    "bandit": (None, {"horizon": 5}),
    "nav2d": (None, {"max_episode_steps": 5}),
    "cartpole": (None, {"max_episode_steps": 8}),
    "halfcheetah-vel": ("mujoco", {"max_episode_steps": 5}),
    "halfcheetah-dir": ("mujoco", {"max_episode_steps": 5}),
    "metaworld-ml1:reach-v3": ("metaworld", {}),
    "procgen:coinrun": ("procgen", {"max_episode_steps": 10}),
}
PARAMS = [
    pytest.param(spec, marks=[] if mod is None else pytest.mark.skipif(
        importlib.util.find_spec(mod) is None, reason=f"{mod} not installed"))
    for spec, (mod, _) in SPECS.items()
]  # fmt: skip


@functools.cache
def family_for(spec: str):
    """One (short-episode) family per spec: Meta-World builds its benchmark only once."""
    return make_family(spec, **SPECS[spec][1])


@pytest.fixture(params=PARAMS)
def family(request):
    return family_for(request.param)


def params_of(task: Task) -> tuple:
    return task.params


# --- sampling and specs -----------------------------------------------------------------------


def test_spaces_are_the_familys_and_the_envs(family):
    env = family.make_env(family.sample(1)[0], seed=0)
    assert env.observation_space == family.observation_space
    assert env.action_space == family.action_space
    obs, _ = env.reset()
    assert family.observation_space.contains(obs)
    assert isinstance(env, gym.wrappers.TimeLimit)
    assert env.spec is None or env.spec.max_episode_steps in (None, family.max_episode_steps)


def test_documented_spaces():
    assert make_family("bandit", k=7).action_space == gym.spaces.Discrete(7)
    assert make_family("bandit").observation_space == gym.spaces.Box(0, 1, (1,), np.float32)
    nav = make_family("nav2d")
    assert nav.observation_space.shape == (2,)
    assert np.allclose(nav.action_space.low, -0.1) and np.allclose(nav.action_space.high, 0.1)
    assert make_family("cartpole").action_space == gym.spaces.Discrete(2)
    assert make_family("cartpole").max_episode_steps == 500
    assert make_family("nav2d").max_episode_steps == 100
    assert make_family("bandit").max_episode_steps == 100


def test_sample_is_deterministic_under_seed_and_varies_across_seeds(family):
    a = family.sample(8, "train", seed=3)
    assert a == family.sample(8, "train", seed=3)
    assert len(a) == 8 and all(t.family == family.name and t.split == "train" for t in a)
    assert a != family.sample(8, "train", seed=4)


def test_train_and_test_tasks_are_disjoint(family):
    if family.name == "halfcheetah-dir":  # two tasks, no split in the benchmark
        dirs = {t.param("direction") for t in family.sample(20, "test", seed=0)}
        assert dirs == {-1, 1}
        return
    train = family.sample(40, "train", seed=0)
    test = family.sample(40, "test", seed=1)
    if family.name.startswith("metaworld"):
        bench = family._benchmark
        goals = {pickle.loads(t.data)["rand_vec"].tobytes() for t in bench.train_tasks}
        assert not goals & {pickle.loads(t.data)["rand_vec"].tobytes() for t in bench.test_tasks}
        assert {t.index for t in train} <= set(range(len(bench.train_tasks)))
    else:
        assert not {params_of(t) for t in train} & {params_of(t) for t in test}
        split_of = getattr(family, "split_of", None)
        if split_of is not None:
            assert all(split_of(dict(t.params)) == "train" for t in train)


def test_task_json_round_trip_gives_an_equal_task_with_the_same_hash(family):
    for task in family.sample(3, "train", seed=0) + family.sample(2, "test", seed=0):
        back = Task.from_dict(json.loads(json.dumps(task.to_dict())))
        assert back == task and hash(back) == hash(task)
        assert family.name in str(task)


def test_task_to_dict_is_plain_json():
    task = Task.create("bandit", "train", 2, {"probs": np.array([0.25, 0.5])})
    d = task.to_dict()
    assert d == {"family": "bandit", "split": "train", "index": 2, "params": {"probs": [0.25, 0.5]}}
    assert type(d["params"]["probs"][0]) is float
    assert task.param("probs") == (0.25, 0.5)
    with pytest.raises(KeyError, match="probs"):
        task.param("goal")


# --- environments ----------------------------------------------------------------------------


def test_random_rollout_through_make_env(family):
    task = family.sample(1, "test", seed=0)[0]
    env = family.make_env(task, seed=1)
    assert env.unwrapped.task == task
    obs, _ = env.reset()
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert family.observation_space.contains(obs)
        assert np.isfinite(reward)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_vector_env_runs_task_i_in_envs_i_times_k_and_reports_final_obs(family):
    tasks = family.sample(2, "train", seed=0)
    venv = family.make_vector_env(tasks, envs_per_task=2, seed=0)
    assert list(venv.get_attr("task")) == [tasks[0], tasks[0], tasks[1], tasks[1]]
    obs, _ = venv.reset()
    assert obs.shape == (4, *family.observation_space.shape)
    ended = False
    for _ in range(family.max_episode_steps + 1):
        obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        assert obs.shape == (4, *family.observation_space.shape) and reward.shape == (4,)
        done = terminated | truncated
        if done.any():
            ended = True
            assert info["_final_obs"].tolist() == done.tolist()
            for i in np.flatnonzero(done):
                assert family.observation_space.contains(info["final_obs"][i])
            break
    assert ended, "no episode ended within max_episode_steps"
    venv.close()


def test_async_vector_env_matches_sync():
    fam = make_family("nav2d", max_episode_steps=3)
    tasks = fam.sample(2, seed=0)
    actions = np.full((4, 2), 0.05, np.float32)
    outs = []
    for asynchronous in (False, True):
        venv = fam.make_vector_env(tasks, 2, asynchronous=asynchronous, seed=0)
        venv.reset()
        outs.append([venv.step(actions)[:2] for _ in range(3)])
        venv.close()
    for (o1, r1), (o2, r2) in zip(*outs):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)


def test_env_is_deterministic_under_seed(family):
    task = family.sample(1, seed=0)[0]
    family.action_space.seed(0)
    actions = [family.action_space.sample() for _ in range(6)]

    def run(seed):
        env = family.make_env(task, seed=seed)
        obs, _ = env.reset()
        trace = [obs]
        for a in actions:
            obs, reward, terminated, truncated, _ = env.step(a)
            trace += [obs, reward]
            if terminated or truncated:
                break
        return trace

    a, b = run(5), run(5)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_bandit_seed_changes_rewards():
    fam = make_family("bandit", horizon=200)
    task = Task.create("bandit", "train", 0, {"probs": [0.5] * 5})

    def rewards(seed):
        env = fam.make_env(task, seed=seed)
        env.reset()
        return [env.step(0)[1] for _ in range(200)]

    assert rewards(0) == rewards(0) and rewards(0) != rewards(1)


# --- reward definitions ------------------------------------------------------------------------


def test_bandit_reward_is_bernoulli_of_the_arm_and_regret_is_best_minus_arm():
    fam = make_family("bandit", k=3, horizon=2000)
    env = fam.make_env(Task.create("bandit", "train", 0, {"probs": [0.0, 1.0, 0.25]}), seed=0)
    env.reset()
    _, r, _, _, info = env.step(1)
    assert r == 1.0 and info["regret"] == 0.0
    _, r, _, _, info = env.step(0)
    assert r == 0.0 and info["regret"] == 1.0
    pulls = [env.step(2) for _ in range(1500)]
    assert all(p[4]["regret"] == 0.75 for p in pulls)
    assert abs(np.mean([p[1] for p in pulls]) - 0.25) < 0.05
    with pytest.raises(ValueError, match="arm"):
        env.step(3)


def test_nav2d_reward_is_minus_distance_after_the_clipped_move():
    fam = make_family("nav2d")
    env = fam.make_env(Task.create("nav2d", "train", 0, {"goal": [0.3, 0.4]}))
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    obs, r, _, _, info = env.step(np.array([0.5, -0.5]))  # clipped to (0.1, -0.1)
    np.testing.assert_allclose(obs, [0.1, -0.1], atol=1e-7)
    assert r == pytest.approx(-np.hypot(0.2, 0.5)) and not info["success"]
    env = fam.make_env(Task.create("nav2d", "train", 0, {"goal": [0.07, 0.0]}))
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.array([0.05, 0.0]))
    assert r == pytest.approx(-0.02) and info["success"]


def test_cartpole_uses_task_physics_and_succeeds_only_at_the_limit():
    fam = make_family("cartpole", max_episode_steps=3)
    task = Task.create("cartpole", "train", 0, {"length": 0.9, "gravity": 11.0})
    env = fam.make_env(task, seed=0)
    assert env.unwrapped.length == 0.9 and env.unwrapped.gravity == 11.0
    env.reset()
    infos = [env.step(0) for _ in range(3)]
    assert [i[4]["success"] for i in infos] == [False, False, True]
    assert infos[-1][3] and not infos[-1][2]  # truncated, not terminated
    # heavier gravity makes a tilted pole fall faster
    falls = []
    for g in (7.8, 11.8):
        env = fam.make_env(Task.create("cartpole", "train", 0, {"length": 0.5, "gravity": g}))
        env.reset(seed=0)
        env.unwrapped.state = np.array([0.0, 0.0, 0.1, 0.0])
        falls.append(env.step(1)[0][3])
    assert falls[1] > falls[0]


@pytest.mark.parametrize("spec", ["halfcheetah-vel", "halfcheetah-dir"])
def test_halfcheetah_reward_matches_its_definition(spec):
    pytest.importorskip("mujoco")
    fam = family_for(spec)
    key, value = ("target_velocity", 1.5) if spec == "halfcheetah-vel" else ("direction", -1)
    env = fam.make_env(Task.create(spec, "train", 0, {key: value}), seed=0)
    env.reset()
    x_before = env.unwrapped.data.qpos[0]
    action = np.array([0.5, -0.3, 0.2, 0.9, -1.0, 0.1], np.float32)
    _, reward, _, _, info = env.step(action)
    velocity = (info["x_position"] - x_before) / env.unwrapped.dt
    assert info["x_velocity"] == pytest.approx(velocity)
    ctrl = 0.05 * float(np.sum(np.square(action)))
    task_reward = -abs(velocity - value) if spec == "halfcheetah-vel" else value * velocity
    assert reward == pytest.approx(task_reward - ctrl)


def test_metaworld_reports_success_and_mt10_has_no_test_split():
    pytest.importorskip("metaworld")
    fam = family_for("metaworld-ml1:reach-v3")
    assert fam.observation_space.shape == (39,) and fam.action_space.shape == (4,)
    assert fam.max_episode_steps == 500
    env = fam.make_env(fam.sample(1)[0], seed=0)
    env.reset()
    assert "success" in env.step(env.action_space.sample())[4]
    with pytest.raises(ValueError, match="no test split"):
        make_family("metaworld-mt10").sample(1, "test")


def test_procgen_levels_are_the_tasks_levels():
    pytest.importorskip("procgen")
    fam = family_for("procgen:coinrun")
    train, test = fam.sample(50, "train"), fam.sample(50, "test")
    assert max(t.param("start_level") for t in train) < 200
    assert min(t.param("start_level") for t in test) >= 10_000
    env = fam.make_env(test[0], seed=0)
    env.reset()
    assert env.step(0)[4]["level_seed"] == test[0].param("start_level")


# --- errors ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    fam = make_family("nav2d")
    with pytest.raises(ValueError, match="split must be one of"):
        fam.sample(2, "validation")
    with pytest.raises(ValueError, match="non-negative int"):
        fam.sample(-1)
    with pytest.raises(ValueError, match="Did you mean 'nav2d'"):
        make_family("nav2")
    with pytest.raises(ValueError, match="metaworld-ml45"):
        make_family("no-such-family")
    with pytest.raises(ValueError, match="procgen:<game>"):
        make_family("procgen")
    other = make_family("bandit").sample(1)[0]
    with pytest.raises(ValueError, match="belongs to family 'bandit'"):
        fam.make_env(other)
    with pytest.raises(ValueError, match="belongs to family 'bandit'"):
        fam.make_vector_env([fam.sample(1)[0], other])


def test_every_registered_family_has_a_spec():
    assert set(FAMILIES) == {s.split(":")[0] for s in SPECS} | {
        "metaworld-ml10", "metaworld-ml45", "metaworld-mt10"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "module", "extra"),
    [
        ("metaworld-ml1:reach-v3", "metaworld", "metaworld"),
        ("metaworld-ml10", "metaworld", "metaworld"),
        ("procgen:coinrun", "procgen", "procgen"),
        ("halfcheetah-vel", "mujoco", "mujoco"),
    ],
)
def test_missing_extra_names_the_pip_command(monkeypatch, spec, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtraError, match=rf"pip install 'ssm-lifelong-metarl\[{extra}\]'"):
        make_family(spec)
    assert issubclass(MissingExtraError, ImportError)


def test_importing_tasks_imports_no_optional_dependency():
    code = (
        "import sys, metarl.tasks; "
        "print([m for m in ('metaworld', 'procgen', 'mujoco', 'gym3') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
