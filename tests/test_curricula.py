"""Curricula: shipped files, validation errors, task specs and envs, the stage scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from curricula import (
    CurriculumError,
    StageSchedule,
    available_curricula,
    load_curriculum,
    parse_curriculum,
)

CW10 = [
    "hammer",
    "push-wall",
    "faucet-close",
    "push-back",
    "stick-pull",
    "handle-press-side",
    "push",
    "shelf-place",
    "window-close",
    "peg-unplug-side",
]


def minimal(**changes):
    data = {
        "name": "tiny",
        "steps_per_stage": 100,
        "defaults": {"family": "nav2d", "family_kwargs": {"max_episode_steps": 5}},
        "tasks": {"a": {"params": {"goal": [0.3, 0.3]}}, "b": {"params": {"goal": [-0.3, 0.3]}}},
        "stages": [{"tasks": ["a"]}, {"tasks": ["b"], "steps": 50}],
    }
    data.update(changes)
    return data


def test_every_shipped_curriculum_loads_and_names_itself():
    names = available_curricula()
    assert {"cw10", "cw20", "nav2d_quadrants", "cartpole_variants", "cartpole_difficulty"} <= set(
        names
    )
    for name in names:
        c = load_curriculum(name)
        assert c.name == name
        assert c.stages and all(s.steps > 0 for s in c.stages)


def test_cw10_and_cw20_follow_continual_world():
    cw10, cw20 = load_curriculum("cw10"), load_curriculum("cw20")
    assert cw10.stage_names == CW10
    assert [cw10.task(n).family for n in CW10] == [f"metaworld-ml1:{n}-v3" for n in CW10]
    assert all(t.metric == "success" for t in cw10.tasks)
    assert cw20.stage_names == CW10 + [f"{n}@2" for n in CW10]
    assert [s.tasks for s in cw20.stages] == [s.tasks for s in cw10.stages] * 2
    assert cw10.total_steps == 10_000_000 and cw20.total_steps == 20_000_000


def test_defaults_fill_task_entries_and_stage_steps():
    c = parse_curriculum(minimal())
    assert c.task("a").family == "nav2d" and dict(c.task("a").family_kwargs) == {
        "max_episode_steps": 5
    }
    assert [s.steps for s in c.stages] == [100, 50]
    assert c.stage_names == ["a", "b"]  # default stage name: its tasks


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stagez": []}, "unknown key 'stagez'; did you mean 'stages'"),
        ({"stages": []}, "non-empty list of stages"),
        ({"stages": [{"tasks": ["c"]}]}, "unknown task 'c'"),
        ({"stages": [{"tasks": ["a"], "steps": 0}]}, "must be a positive int"),
        ({"stages": [{"tasks": ["a"]}, {"tasks": ["a"]}]}, "stage names must be unique"),
        ({"tasks": {"a": {"params": {"goal": [0, 0]}, "sample": 3}}}, "exactly one of"),
        ({"tasks": {"a": {"params": {"goal": [0, 0]}, "metric": "return"}}}, "return_range"),
        ({"tasks": {"a": {"params": {"goal": [0, 0]}, "metric": "reward"}}}, "metric"),
        ({"steps_per_stage": None, "stages": [{"tasks": ["a"]}]}, "missing"),
        ({"name": ""}, "name"),
        ({"stages": [{"tasks": ["a"], "eval": ["z"]}]}, "unknown task 'z'"),
        ({"stages": [{"tasks": ["a"], "eval": 3}]}, "list of task names"),
    ],
)
def test_bad_curricula_raise_naming_the_key(change, message):
    with pytest.raises(CurriculumError, match=message):
        parse_curriculum(minimal(**change), "bad.yaml")


def test_unknown_shipped_name_suggests_and_missing_file_is_reported(tmp_path):
    with pytest.raises(CurriculumError, match="Did you mean 'cw10'"):
        load_curriculum("cw11")
    with pytest.raises(CurriculumError, match="not found"):
        load_curriculum(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(CurriculumError, match="not valid YAML"):
        load_curriculum(path)


def test_a_curriculum_file_loads_by_path(tmp_path):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(minimal(repeat=2)))
    c = load_curriculum(path)
    assert c.stage_names == ["a", "b", "a@2", "b@2"]
    assert c.source == str(path)


def test_return_scores_map_linearly_and_clip():
    c = parse_curriculum(
        minimal(defaults={"family": "nav2d", "metric": "return", "return_range": [-10, 0]})
    )
    entry = c.task("a")
    assert entry.score(-5.0, 0.0) == pytest.approx(0.5)
    assert entry.score(-20.0, 1.0) == 0.0 and entry.score(3.0, 0.0) == 1.0


def test_build_appends_the_task_one_hot_and_cycles_assignments():
    c = parse_curriculum(minimal(task_id_obs=True))
    built = c.build()
    assert built.observation_space.shape == (4,)  # position (2) + one-hot over 2 tasks
    assignments = built.assignments(["a", "b"], 4)
    assert [n for n, _ in assignments] == ["a", "b", "a", "b"]
    envs = built.vector_env(assignments, seed=0)
    obs, _ = envs.reset(seed=0)
    np.testing.assert_array_equal(obs[:, 2:], [[1, 0], [0, 1], [1, 0], [0, 1]])
    assert built.task_ids(assignments) == [0, 1, 0, 1]
    envs.close()


def test_sample_entries_draw_several_task_specs():
    c = parse_curriculum(
        minimal(tasks={"a": {"sample": 3, "seed": 4}, "b": {"params": {"goal": [0, 0]}}})
    )
    built = c.build()
    assert len(built.tasks["a"]) == 3 and len(set(built.tasks["a"])) == 3
    assert [t for _, t in built.assignments(["a"], 4)] == [*built.tasks["a"], built.tasks["a"][0]]


def test_tasks_with_different_spaces_cannot_share_a_curriculum():
    data = minimal(
        tasks={
            "a": {"params": {"goal": [0, 0]}},
            "b": {"family": "cartpole", "params": {"length": 0.5, "gravity": 9.8}},
        }
    )
    with pytest.raises(CurriculumError, match="share one observation and action space"):
        parse_curriculum(data).build()


def test_stage_overrides_keep_the_task_table():
    c = load_curriculum("nav2d_quadrants")
    assert [s.steps for s in c.with_stage_steps(640).stages] == [640] * 4
    assert c.first_stages(2).stage_names == c.stage_names[:2]
    one = c.only_stage(2)
    assert one.stage_names == [c.stage_names[2]] and one.tasks == c.tasks


def test_schedule_rounds_stages_to_whole_iterations():
    c = parse_curriculum(minimal(stages=[{"tasks": ["a"], "steps": 250}, {"tasks": ["b"]}]))
    sched = StageSchedule.from_curriculum(c, steps_per_iteration=60)
    assert sched.iterations == (4, 1)  # 250 // 60 and max(1, 100 // 60)
    assert sched.boundaries == [240] and sched.total_steps == 300
    assert sched.locate(3) == (0, 3) and sched.locate(4) == (1, 0)
    with pytest.raises(ValueError):
        sched.locate(5)


def test_a_stage_trains_on_its_tasks_and_is_scored_on_its_eval_tasks():
    c = parse_curriculum(minimal(stages=[{"tasks": ["a"], "eval": ["b"]}, {"tasks": ["b"]}]))
    assert c.stages[0].tasks == ("a",) and c.stages[0].eval_tasks == ("b",)
    assert c.stages[1].eval_tasks == ("b",)  # default: its own tasks


def test_task_distribution_stages_hold_out_disjoint_test_goals_in_each_region():
    c = load_curriculum("nav2d_quadrant_distributions")
    built = c.build()
    corners = {"ne": (1, 1), "sw": (-1, -1), "nw": (-1, 1), "se": (1, -1)}
    for region, (sx, sy) in corners.items():
        train = [t.param("goal") for t in built.tasks[f"{region}_train"]]
        test = [t.param("goal") for t in built.tasks[f"{region}_test"]]
        assert len(train) == 40 and len(test) == 10
        for gx, gy in train + test:  # inside the quadrant, off the axes
            assert gx * sx >= 0.05 and gy * sy >= 0.05 and max(abs(gx), abs(gy)) <= 0.5
        assert not {tuple(g) for g in train} & {tuple(g) for g in test}
        stage = next(s for s in c.stages if s.tasks == (f"{region}_train",))
        assert stage.eval_tasks == (f"{region}_test",)


def test_a_nav2d_region_must_lie_in_the_goal_square():
    from metarl.tasks import make_family

    with pytest.raises(ValueError, match="goal_low and goal_high"):
        make_family("nav2d", goal_low=[0.0, 0.0], goal_high=[0.7, 0.5])


def test_velocity_ranges_and_ml1_sequences_hold_out_their_test_tasks():
    built = load_curriculum("halfcheetah_vel_ranges").build()
    for name, (lo, hi) in {"slow": (0.0, 0.7), "medium": (0.7, 1.4), "fast": (1.4, 2.0)}.items():
        train = [t.param("target_velocity") for t in built.tasks[f"{name}_train"]]
        test = [t.param("target_velocity") for t in built.tasks[f"{name}_test"]]
        assert all(lo <= v <= hi for v in train + test) and not set(train) & set(test)
    ml1 = load_curriculum("ml1_sequence").build()
    assert ml1.max_episode_steps == 150
    for name in ("reach", "push", "pick_place"):
        assert {t.split for t in ml1.tasks[f"{name}_train"]} == {"train"}
        assert {t.split for t in ml1.tasks[f"{name}_test"]} == {"test"}


@pytest.mark.parametrize(
    ("family", "kwargs", "message"),
    [
        ("halfcheetah-vel", {"velocity_low": 1.0, "velocity_high": 0.5}, "velocity_low"),
        ("halfcheetah-vel", {"velocity_low": 0.0, "velocity_high": 2.5}, "velocity_low"),
        ("metaworld-ml1:reach-v3", {"max_episode_steps": 600}, "max_episode_steps"),
    ],
)
def test_bad_task_distribution_ranges_are_refused(family, kwargs, message):
    from metarl.tasks import make_family

    with pytest.raises(ValueError, match=message):
        make_family(family, **kwargs)
