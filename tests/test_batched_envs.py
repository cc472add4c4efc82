"""Natively batched envs (nav2d, bandit, cartpole) equal gymnasium's SyncVectorEnv over the
per-task envs, bit for bit: observations, rewards, ends, infos, autoresets, seeds and the
trajectories the rollout engine collects through them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from metarl import Rollout, make_family
from metarl.task_rollout import collect_tasks
from metarl.tasks import Task
from metarl.tasks.batched import BatchedTaskEnv
from metarl.tasks.nav2d import Nav2DFamily

# spec -> constructor kwargs with short episodes, so the runs below cross many resets
SPECS = {
    "nav2d": {"max_episode_steps": 7},
    "bandit": {"k": 3, "horizon": 6},
    "cartpole": {"max_episode_steps": 25},
}


def random_actions(family, n_envs: int, steps: int, seed: int) -> list[np.ndarray]:
    """Actions as the rollout engine sends them (nav2d: float32, some outside the bounds)."""
    rng = np.random.default_rng(seed)
    space = family.action_space
    if isinstance(space, gym.spaces.Discrete):
        return [rng.integers(0, space.n, n_envs).astype(np.int64) for _ in range(steps)]
    return [rng.uniform(-0.15, 0.15, (n_envs, 2)).astype(np.float32) for _ in range(steps)]


def assert_same(a, b, where: str) -> None:
    """Exact equality of step outputs: arrays by dtype and value, dicts by keys, object arrays
    (``final_obs``) element by element."""
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a)} != {set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert b.dtype == object and a.shape == b.shape, where
        for i, (x, y) in enumerate(zip(a, b)):
            assert (x is None) == (y is None), f"{where}[{i}]"
            if x is not None:
                assert_same(x, y, f"{where}[{i}]")
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        np.testing.assert_array_equal(a, b, err_msg=where)


def drive(venv, actions, schedule, state: str | None = None) -> list:
    """Every output of ``venv`` under ``actions``, with the resets of ``schedule`` (step index
    -> reset kwargs) before those steps, and after each step the float64 ``state`` attribute
    of every sub-env (the observations are float32 and may hide a last-bit difference)."""
    outs = []
    for t, action in enumerate(actions):
        if t in schedule:
            kwargs = dict(schedule[t])
            if "options" in kwargs:  # SyncVectorEnv pops reset_mask from the caller's dict
                kwargs["options"] = dict(kwargs["options"])
            outs.append(("reset", venv.reset(**kwargs)))
        outs.append(("step", venv.step(action)))
        if state is not None:
            outs.append(("state", np.stack(venv.get_attr(state))))
    return outs


@pytest.mark.parametrize("spec", list(SPECS))
def test_batched_env_equals_sync_vector_env_across_resets_and_reseeds(spec):
    family = make_family(spec, **SPECS[spec])
    tasks = family.sample(3, seed=0)
    if spec == "nav2d":  # one goal next to the start, so that some steps succeed
        tasks[1] = Task.create("nav2d", "train", 1, {"goal": [0.02, -0.01]})
    steps = 3 * family.max_episode_steps + 4
    actions = random_actions(family, 6, steps, seed=1)
    mask = np.array([True, False, False, True, True, False])
    schedule = {
        0: {},  # first reset: the build-time seeds (SeededReset)
        10: {"seed": 7},  # reseeded mid-episode
        14: {},  # unseeded: the generators continue
        17: {"options": {"reset_mask": mask}},  # only some sub-envs
        20: {"seed": [3, None, 5, None, 11, 2], "options": {"reset_mask": ~mask}},
    }
    batched = family.make_vector_env(tasks, envs_per_task=2, seed=100)
    sync = family.make_vector_env(tasks, envs_per_task=2, seed=100, batched=False)
    assert isinstance(batched, BatchedTaskEnv) and isinstance(sync, gym.vector.SyncVectorEnv)
    state = {"nav2d": "pos", "cartpole": "state"}.get(spec)
    a, b = drive(batched, actions, schedule, state), drive(sync, actions, schedule, state)
    assert len(a) == len(b)
    for t, ((kind, out_a), (_, out_b)) in enumerate(zip(a, b)):
        assert_same(out_a, out_b, f"{spec} output {t} ({kind})")
    ends = [out for kind, out in b if kind == "step"]
    assert len(ends) == steps
    terminated = np.any([o[2] for o in ends])
    truncated = np.any([o[3] for o in ends])
    assert truncated and (terminated or spec != "cartpole"), "the run must cross episode ends"
    assert sum(o[4].get("_final_obs", np.zeros(6, bool)).sum() for o in ends) >= 6
    if spec != "bandit":  # success is reported, and true somewhere (cartpole: at the limit)
        key, info = "success", (lambda o: o[4] if spec == "nav2d" else o[4].get("final_info", {}))
        assert any(info(o).get(key, np.zeros(6, bool)).any() for o in ends)


def test_unseeded_batched_env_draws_differ_between_builds_like_the_per_env_ones():
    family = make_family("bandit", k=2, horizon=50)
    task = family.sample(1, seed=0)[0]
    task = type(task).create("bandit", "train", 0, {"probs": [0.5, 0.5]})
    runs = []
    for _ in range(2):
        venv = family.make_vector_env([task], envs_per_task=2)
        venv.reset()
        runs.append(np.stack([venv.step(np.zeros(2, np.int64))[1] for _ in range(40)]))
    assert not np.array_equal(runs[0], runs[1])  # fresh entropy, as an unseeded gym.Env


def test_bandit_draws_ahead_without_changing_rewards_over_long_horizons():
    """Rewards stay equal past several blocks of pre-drawn uniforms and after reseeding."""
    family = make_family("bandit", k=4, horizon=300)
    tasks = family.sample(2, seed=3)
    actions = random_actions(family, 2, 700, seed=2)
    schedule = {0: {"seed": 5}, 301: {"seed": 9}, 450: {}}
    a = drive(family.make_vector_env(tasks, seed=0), actions, schedule)
    b = drive(family.make_vector_env(tasks, seed=0, batched=False), actions, schedule)
    for t, ((_, out_a), (_, out_b)) in enumerate(zip(a, b)):
        assert_same(list(out_a), list(out_b), f"output {t}")


def test_make_vector_env_chooses_batched_sync_or_async():
    family = make_family("nav2d", max_episode_steps=3)
    tasks = family.sample(2, seed=0)
    assert isinstance(family.make_vector_env(tasks), BatchedTaskEnv)
    assert isinstance(family.make_vector_env(tasks, batched=False), gym.vector.SyncVectorEnv)
    venv = family.make_vector_env(tasks, asynchronous=True)
    assert isinstance(venv, gym.vector.AsyncVectorEnv)
    venv.close()
    with pytest.raises(ValueError, match="asynchronous=False"):
        family.make_vector_env(tasks, asynchronous=True, batched=True)

    class Unbatched(Nav2DFamily):
        def _make_batched_env(self, tasks, seeds):
            return None

    plain = Unbatched(max_episode_steps=3)
    assert isinstance(plain.make_vector_env(tasks), gym.vector.SyncVectorEnv)
    with pytest.raises(ValueError, match="no batched env"):
        plain.make_vector_env(tasks, batched=True)


@pytest.mark.parametrize("spec", list(SPECS))
def test_get_attr_gives_what_the_sync_env_gives(spec):
    family = make_family(spec, **SPECS[spec])
    tasks = family.sample(2, seed=0)
    batched = family.make_vector_env(tasks, envs_per_task=2, seed=0)
    sync = family.make_vector_env(tasks, envs_per_task=2, seed=0, batched=False)
    assert batched.get_attr("task") == sync.get_attr("task") == (tasks[0],) * 2 + (tasks[1],) * 2
    assert batched.call("task") == sync.call("task")
    name = {"nav2d": "goal", "bandit": "probs", "cartpole": "gravity"}[spec]
    for x, y in zip(batched.get_attr(name), sync.get_attr(name)):
        np.testing.assert_array_equal(x, y)
    batched.reset(seed=4)
    sync.reset(seed=4)
    for g, h in zip(batched.get_attr("np_random"), sync.get_attr("np_random")):
        assert g.random() == h.random()
    assert batched.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    with pytest.raises(AttributeError, match="offers get_attr"):
        batched.get_attr("no_such_attribute")
    with pytest.raises(AttributeError, match="cannot set"):
        batched.set_attr(name, None)


def test_bad_use_raises_clear_errors():
    nav = make_family("nav2d").make_vector_env(make_family("nav2d").sample(2, seed=0), seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        nav.step(np.zeros((2, 2), np.float32))
    nav.reset()
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        nav.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="reset seeds"):
        nav.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="reset_mask"):
        nav.reset(options={"reset_mask": np.zeros(2, bool)})
    bandit = make_family("bandit", k=3)
    venv = bandit.make_vector_env(bandit.sample(2, seed=0), seed=0)
    venv.reset()
    with pytest.raises(ValueError, match=r"arm in \[0, 3\)"):
        venv.step(np.array([0, 3]))
    cart = make_family("cartpole")
    venv = cart.make_vector_env(cart.sample(2, seed=0), seed=0)
    venv.reset()
    with pytest.raises(ValueError, match=r"integer actions in \{0, 1\}"):
        venv.step(np.array([0, 2]))


# --- consumers: the rollout engine and the task-batched collection ----------------------------


def _policy(family, in_context: bool) -> ssm.SequencePolicy:
    torch.manual_seed(0)
    return ssm.SequencePolicy(
        family.observation_space,
        family.action_space,
        kind="gru",
        d_model=16,
        n_layers=1,
        in_context=in_context,
    )


def assert_same_trajectory(a, b) -> None:
    for key, value in vars(a).items():
        other = vars(b)[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key


@pytest.mark.parametrize(
    ("spec", "rollout_kwargs"),
    [
        ("nav2d", {}),  # Box actions, truncation bootstraps from info["final_obs"]
        ("bandit", {"reset_state": "trial", "episodes_per_trial": 2}),  # RL² trials
        ("cartpole", {}),  # terminations and truncations, success from info["final_info"]
    ],
)
def test_rollout_trajectories_are_identical_through_either_env(spec, rollout_kwargs):
    family = make_family(spec, **SPECS[spec])
    tasks = family.sample(3, seed=0)
    policy = _policy(family, in_context=bool(rollout_kwargs))
    trajs = []
    for batched in (True, False):
        envs = family.make_vector_env(tasks, envs_per_task=2, seed=5, batched=batched)
        rollout = Rollout(
            policy, envs, generator=torch.Generator().manual_seed(0), seed=5, **rollout_kwargs
        )
        trajs.append([rollout.collect(family.max_episode_steps + 3) for _ in range(2)])
    for a, b in zip(*trajs):
        assert_same_trajectory(a, b)
    assert bool(trajs[0][0].truncated.any())


def test_task_batched_collection_is_identical_through_either_env():
    """Per-task parameters (the meta-learners' inner loop) through the reused env of a task set."""
    family = make_family("nav2d", max_episode_steps=5)
    tasks = family.sample(2, seed=0)
    policy = _policy(family, in_context=False)
    params = {k: torch.stack([v.detach(), v.detach() * 0.9]) for k, v in policy.named_parameters()}
    trajs = []
    for batched in (True, False):
        envs = family.make_vector_env(tasks, envs_per_task=3, seed=2, batched=batched)
        gen = torch.Generator().manual_seed(1)
        trajs.append(
            [
                collect_tasks(policy, family, tasks, 3, 12, s, params, generator=gen, envs=envs)
                for s in (10, 20)
            ]
        )
    for a, b in zip(*trajs):
        assert_same_trajectory(a, b)


def test_a_family_subclass_that_wraps_its_envs_is_not_batched_silently():
    """A subclass that changes the per-task env (a wrapper, a slow-down) keeps it: the batched env
    would skip it, so it is only used when asked for."""
    import gymnasium as gym

    from metarl.tasks.nav2d import Nav2DFamily

    class Wrapped(Nav2DFamily):
        def _make_task_env(self, task):
            return gym.wrappers.TransformReward(super()._make_task_env(task), lambda r: 2 * r)

    fam = Wrapped(max_episode_steps=5)
    tasks = fam.sample(2, "train", seed=1)
    env = fam.make_vector_env(tasks, seed=0)
    assert isinstance(env, gym.vector.SyncVectorEnv)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros((2, 2), np.float32))
    plain = Nav2DFamily(max_episode_steps=5).make_vector_env(tasks, seed=0)
    plain.reset(seed=0)
    _, plain_reward, *_ = plain.step(np.zeros((2, 2), np.float32))
    np.testing.assert_allclose(reward, 2 * plain_reward)
    assert not isinstance(
        fam.make_vector_env(tasks, seed=0, batched=True), gym.vector.SyncVectorEnv
    )
