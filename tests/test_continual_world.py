"""ContinualWorldEnv: the CW10/CW20 lists, spaces, budgets and switching, task ids in info and
observation, the success flag, seeding, bad input, gymnasium's checker and import weight."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("metaworld")

from curricula.continual_world import (  # noqa: E402
    ENV_ID,
    ContinualWorldEnv,
    SequenceFinishedError,
    register_continual_world,
)

# Wołczyk et al. (2021), Continual World, Section 3 (the v1 names there, v3 here).
CW10_PAPER = [
    "hammer", "push-wall", "faucet-close", "push-back", "stick-pull",
    "handle-press-side", "push", "shelf-place", "window-close", "peg-unplug-side",
]  # fmt: skip
TWO = ["reach-v3", "push-v3"]
GOAL = slice(36, 39)


def run(env: ContinualWorldEnv, max_steps: int, seed: int = 0, action_seed: int = 1) -> list:
    """Random actions until the sequence is done or ``max_steps``: one record per step,
    ``("reset", obs, info)`` or ``("step", obs, reward, terminated, truncated, info)``."""
    env.action_space.seed(action_seed)
    obs, info = env.reset(seed=seed)
    out: list = [("reset", obs, info)]
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append(("step", obs, reward, terminated, truncated, info))
        if terminated or truncated:
            if info["sequence_done"]:
                break
            obs, info = env.reset()
            out.append(("reset", obs, info))
    return out


def steps(records: list) -> list:
    return [r for r in records if r[0] == "step"]


# --- task lists and spaces --------------------------------------------------------------------


def test_cw10_and_cw20_follow_the_paper_with_v3_names():
    import metaworld

    cw10 = ContinualWorldEnv("cw10")
    assert cw10.sequence == [f"{n}-v3" for n in CW10_PAPER]
    assert set(cw10.sequence) <= set(metaworld.MT1.ENV_NAMES)
    assert cw10.budgets == [1_000_000] * 10 and cw10.num_tasks == 10
    assert cw10.max_episode_steps == 200 and cw10.after_last == "stop"
    cw20 = ContinualWorldEnv("cw20", steps_per_task=7)
    assert cw20.sequence == cw10.sequence * 2 and cw20.budgets == [7] * 20
    assert cw20.task_ids == list(range(10)) * 2  # a repeated task keeps its id
    assert cw20.observation_space.shape == (39 + 10,)


@pytest.mark.parametrize("task_id_obs", [True, False])
def test_spaces_with_and_without_the_task_one_hot(task_id_obs):
    env = ContinualWorldEnv(TWO, steps_per_task=2, task_id_obs=task_id_obs)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert env.observation_space.shape == (41 if task_id_obs else 39,)
    assert env.observation_space.dtype == np.float64
    for record in run(env, 10):
        assert env.observation_space.contains(record[1])
    if task_id_obs:
        assert np.array_equal(env.observation_space.low[39:], [0, 0])
        assert np.array_equal(env.observation_space.high[39:], [1, 1])


# --- budgets, switching, task ids -------------------------------------------------------------


def test_switches_exactly_after_each_budget_and_stops_after_the_last():
    env = ContinualWorldEnv(
        ["reach-v3", "push-v3", "reach-v3"], steps_per_task=[5, 3, 6], max_episode_steps=4
    )
    records = run(env, 100)
    st = steps(records)
    assert len(st) == 5 + 3 + 6
    assert [r[5]["task_index"] for r in st] == [0] * 5 + [1] * 3 + [2] * 6
    assert [r[5]["total_steps"] for r in st] == list(range(1, 15))
    assert [r[5]["task_steps"] for r in st] == [1, 2, 3, 4, 5, 1, 2, 3, 1, 2, 3, 4, 5, 6]
    # episode ends: length 4 (step 4, 12), the switches (5, 8) and the end of the sequence (14)
    assert [i + 1 for i, r in enumerate(st) if r[4]] == [4, 5, 8, 12, 14]
    assert [i + 1 for i, r in enumerate(st) if r[5]["task_switch"]] == [5, 8]
    assert [i + 1 for i, r in enumerate(st) if r[5]["sequence_done"]] == [14]
    assert not any(r[3] for r in st)  # Meta-World never terminates
    # the reset after a switch starts the next task
    resets = [r[2]["task_index"] for r in records if r[0] == "reset"]
    assert resets == [0, 0, 1, 2, 2]
    assert env.finished
    with pytest.raises(SequenceFinishedError, match="reset\\(seed=...\\)"):
        env.reset()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())
    _, info = env.reset(seed=0)  # a seeded reset begins the sequence anew
    assert (info["task_index"], info["total_steps"], env.finished) == (0, 0, False)


def test_task_id_and_name_in_info_and_one_hot_in_every_observation():
    env = ContinualWorldEnv(["reach-v3", "push-v3", "reach-v3"], steps_per_task=[3, 2, 3])
    records = run(env, 100)
    for r in records:
        obs, info = r[1], r[-1]
        assert (info["task_id"], info["task_name"]) == [
            (0, "reach-v3"), (1, "push-v3"), (0, "reach-v3")
        ][info["task_index"]]  # fmt: skip
        assert np.array_equal(obs[39:], np.eye(2)[info["task_id"]])
    assert {r[-1]["task_index"] for r in records} == {0, 1, 2}


def test_after_last_stay_keeps_the_last_task_without_truncating():
    env = ContinualWorldEnv(["reach-v3"], steps_per_task=3, after_last="stay", max_episode_steps=9)
    st = steps(run(env, 12))
    assert [i + 1 for i, r in enumerate(st) if r[4]] == [9]  # only the episode length
    assert [r[5]["sequence_done"] for r in st[:9]] == [False, False] + [True] * 7
    assert [r[5]["task_steps"] for r in st] == list(range(1, 10))
    assert not env.finished
    _, info = env.reset()  # still the last task
    assert info["task_index"] == 0 and info["task_steps"] == 9


@pytest.mark.filterwarnings("ignore:Constant")  # the expert's own gain warning
def test_success_is_metaworlds_flag_under_a_scripted_policy():
    from metaworld.policies import SawyerReachV3Policy

    env = ContinualWorldEnv(["reach-v3"], steps_per_task=200, max_episode_steps=200)
    policy = SawyerReachV3Policy()
    obs, _ = env.reset(seed=0)
    flags = []
    for _ in range(200):
        obs, _, terminated, truncated, info = env.step(policy.get_action(obs[:39]))
        flags.append(info["success"])
        if terminated or truncated:
            break
    assert set(flags) <= {0.0, 1.0} and all(isinstance(f, float) for f in flags)
    assert flags[0] == 0.0 and max(flags) == 1.0  # reaches the goal, not from the start


# --- seeding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("randomization", ["random_init_all", "mt1"])
def test_same_seed_same_trajectory_other_seed_differs(randomization):
    def make():
        return ContinualWorldEnv(
            TWO, steps_per_task=[6, 6], max_episode_steps=4, randomization=randomization
        )

    def observations(records):
        return np.array([r[1] for r in records])

    env = make()
    a = run(env, 20, seed=3)
    b = run(make(), 20, seed=3)
    assert np.array_equal(observations(a), observations(b))
    assert [r[2] for r in steps(a)] == [r[2] for r in steps(b)]  # rewards
    assert np.array_equal(observations(run(env, 20, seed=3)), observations(a))  # reseeding
    c = run(make(), 20, seed=4)
    assert len(c) == len(a) and not np.array_equal(observations(c), observations(a))
    # every episode draws its own configuration: the two reach-v3 episodes have other goals
    reach = [r[1][GOAL] for r in a if r[0] == "reset" and r[2]["task_name"] == "reach-v3"]
    assert len(reach) == 2 and not np.allclose(reach[0], reach[1])


def test_mt1_mode_draws_metaworlds_seeded_configurations():
    import metaworld

    reference = metaworld.env_dict.ALL_V3_ENVIRONMENTS["reach-v3"]()
    goals = []
    for task in metaworld.MT1("reach-v3", seed=5).train_tasks:
        reference.set_task(task)
        goals.append(reference.reset()[0][GOAL])

    def episode_goals(randomization):
        env = ContinualWorldEnv(
            ["reach-v3"], steps_per_task=12, max_episode_steps=2,
            randomization=randomization, benchmark_seed=5,
        )  # fmt: skip
        return [r[1][GOAL] for r in run(env, 12) if r[0] == "reset"]

    def in_mt1(goal):
        return any(np.allclose(goal, g) for g in goals)

    assert all(in_mt1(g) for g in episode_goals("mt1"))
    assert not any(in_mt1(g) for g in episode_goals("random_init_all"))


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tasks": []}, "at least one"),
        ({"tasks": ["hamer-v3"]}, "did you mean.*hammer-v3"),
        ({"tasks": "cw11"}, "shipped curriculum"),
        ({"tasks": "nav2d_quadrants"}, "metaworld-ml1"),
        ({"tasks": [3]}, "list of str"),
        ({"tasks": TWO, "steps_per_task": 0}, "positive"),
        ({"tasks": TWO, "steps_per_task": -5}, "positive"),
        ({"tasks": TWO, "steps_per_task": 1.5}, "positive"),
        ({"tasks": TWO, "steps_per_task": [3, 0]}, "positive"),
        ({"tasks": TWO, "steps_per_task": [3, 3, 3]}, "one per task"),
        ({"tasks": TWO, "max_episode_steps": 501}, "max_episode_steps"),
        ({"tasks": TWO, "after_last": "loop"}, "after_last"),
        ({"tasks": TWO, "randomization": "fixed"}, "randomization"),
        ({"tasks": TWO, "benchmark_seed": -1}, "benchmark_seed"),
    ],
)
def test_bad_input_is_a_one_line_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        ContinualWorldEnv(**kwargs)
    assert "\n" not in str(e.value)


# --- gymnasium --------------------------------------------------------------------------------


def test_passes_gymnasiums_env_checker():
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        # Meta-World's object and goal coordinates are unbounded (its own space says so)
        warnings.filterwarnings("ignore", message=".*infinity.*")
        warnings.filterwarnings("ignore", message=".*render modes.*")
        check_env(ContinualWorldEnv(TWO))


def test_gymnasium_make_builds_it_through_the_registered_id():
    assert register_continual_world() == ENV_ID and ENV_ID in gym.registry
    env = gym.make(
        f"curricula.continual_world:{ENV_ID}", tasks=TWO, steps_per_task=2, max_episode_steps=5
    )
    assert isinstance(env.unwrapped, ContinualWorldEnv) and env.unwrapped.budgets == [2, 2]
    env.reset(seed=0)
    *_, truncated, info = env.step(env.action_space.sample())
    *_, truncated, info = env.step(env.action_space.sample())
    assert truncated and info["task_switch"]
    _, info = env.reset()
    assert info["task_name"] == "push-v3"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_importing_it_loads_neither_torch_nor_the_framework_nor_metaworld():
    out = _python(
        "import sys, curricula.continual_world\n"
        "print([m for m in ('torch', 'ssm', 'metarl', 'metaworld', 'mujoco') if m in sys.modules])"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_metaworld_construction_says_what_to_install():
    out = _python(
        "import sys; sys.modules['metaworld'] = None\n"
        "from curricula.continual_world import ContinualWorldEnv\n"
        "try:\n    ContinualWorldEnv(['reach-v3'])\n"
        "except ImportError as e:\n    print('ImportError:', e)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ImportError: ContinualWorldEnv needs Meta-World v3")
    assert "pip install 'ssm-lifelong-metarl[metaworld]'" in out.stdout
