"""Learning speed per stage (continual.learning_speed) on hand-made training curves."""

import json
import math

import pytest

from continual.learning_speed import learning_speed, stage_learning_speeds, stage_return_ranges
from curricula import parse_curriculum


def test_learning_speed_is_the_mean_over_the_first_window_steps():
    steps = [100, 200, 300, 400]
    values = [0.0, 0.2, 0.4, 1.0]
    assert learning_speed(steps, values, 200) == pytest.approx(0.1)
    assert learning_speed(steps, values, 300) == pytest.approx(0.2)
    assert learning_speed(steps, values, 10_000) == pytest.approx(0.4)
    # the window's right end is inclusive, a row at step 0 belongs to the stage before
    assert learning_speed([0, 100], [5.0, 1.0], 100) == pytest.approx(1.0)


def test_learning_speed_skips_nan_and_is_nan_without_data():
    assert learning_speed([100, 200], [math.nan, 3.0], 200) == pytest.approx(3.0)
    assert math.isnan(learning_speed([100], [math.nan], 200))
    assert math.isnan(learning_speed([500], [1.0], 200))


def test_learning_speed_rejects_bad_input():
    with pytest.raises(ValueError, match="one length"):
        learning_speed([1, 2], [1.0], 10)
    with pytest.raises(ValueError, match="positive"):
        learning_speed([1], [1.0], 0)


def test_stage_learning_speeds_splits_rows_by_stage_and_normalises():
    # two stages of 3 iterations of 100 steps; stage 1 learns slower than stage 0
    rows = [{"step": 0, "kind": "eval", "stage": 0, "eval/a": 0.0}]
    for i, ret in enumerate([-8.0, -4.0, 0.0]):
        rows.append({"step": 100 * (i + 1), "stage": 0, "episodic_return": ret})
    rows.append({"step": 300, "kind": "eval", "stage": 0, "episodic_return": 99.0})
    for i, ret in enumerate([-10.0, -8.0, -6.0]):
        rows.append({"step": 300 + 100 * (i + 1), "stage": 1, "episodic_return": ret})
    raw = stage_learning_speeds(rows, [0, 300], window=200)
    assert raw == pytest.approx([-6.0, -9.0])
    scored = stage_learning_speeds(rows, [0, 300], 300, [(-8.0, 0.0), None])
    assert scored == pytest.approx([0.5, -8.0])  # (-4 + 8) / 8; stage 1 raw
    # scores clipped to [0, 1] (default) or not: stage 1 mapped from (-12, -4) by halves
    ranges = [(-8.0, 0.0), (-12.0, -4.0)]
    rows.append({"step": 700, "stage": 1, "episodic_return": -2.0})  # above the best: 1.25
    clipped = stage_learning_speeds(rows, [0, 300], 400, ranges)
    assert clipped == pytest.approx([0.5, (0.25 + 0.5 + 0.75 + 1.0) / 4])
    unclipped = stage_learning_speeds(rows, [0, 300], 400, ranges, clip=False)
    assert unclipped == pytest.approx([0.5, (0.25 + 0.5 + 0.75 + 1.25) / 4])
    below = [{"step": 100, "stage": 0, "episodic_return": -10.0}]
    assert stage_learning_speeds(below, [0], 100, [(-8.0, 0.0)]) == [0.0]
    assert stage_learning_speeds(below, [0], 100, [(-8.0, 0.0)], clip=False) == [-0.25]
    with pytest.raises(ValueError, match="one entry per stage"):
        stage_learning_speeds(rows, [0, 300], 300, [(-8.0, 0.0)])
    with pytest.raises(ValueError, match="only 1 stages"):
        stage_learning_speeds(rows, [0], 300)


def test_stage_return_ranges_average_the_entries_and_skip_success_metrics():
    c = parse_curriculum(
        {
            "name": "x",
            "steps_per_stage": 10,
            "defaults": {"family": "nav2d", "metric": "return"},
            "tasks": {
                "a": {"params": {"goal": [0.1, 0.1]}, "return_range": [-4.0, 0.0]},
                "b": {"params": {"goal": [0.2, 0.2]}, "return_range": [-8.0, -2.0]},
                "c": {"params": {"goal": [0.3, 0.3]}, "metric": "success"},
            },
            "stages": [{"tasks": ["a"]}, {"tasks": ["a", "b"]}, {"tasks": ["c"]}],
        }
    )
    ranges = stage_return_ranges(c, [s.tasks for s in c.stages])
    assert ranges == [(-4.0, 0.0), (-6.0, -1.0), None]


@pytest.mark.slow  # a tiny two-stage run: ~10 s on an idle core, more on a busy one
def test_run_learning_speed_reads_a_finished_run(tmp_path):
    from continual.learning_speed import run_learning_speed
    from continual.sequence import run_sequence

    curriculum = tmp_path / "two_goals.yaml"
    curriculum.write_text(
        json.dumps(
            {
                "name": "two_goals",
                "steps_per_stage": 320,
                "defaults": {
                    "family": "nav2d",
                    "family_kwargs": {"max_episode_steps": 20},
                    "metric": "return",
                    "return_range": [-8.0, 0.0],
                },
                "tasks": {
                    "a": {"params": {"goal": [0.3, 0.3]}},
                    "b": {"params": {"goal": [-0.3, 0.3]}},
                },
                "stages": [{"tasks": ["a"]}, {"tasks": ["b"]}],
            }
        )
    )
    result = run_sequence(
        None,
        [
            f"curriculum={curriculum}",
            "policy.kind=s4d",
            "policy.d_model=8",
            "policy.encoder_hidden=8",
            "ppo.num_envs=2",
            "ppo.num_steps=80",
            "ppo.num_minibatches=1",
            "ppo.update_epochs=1",
            "eval.every_iterations=100",
            f"run.root={tmp_path}",
            "run.threads=1",
            "logging.progress=false",
        ],
    )
    out = run_learning_speed(result.run.path, clip=False)
    assert out["window_steps"] == 320 and out["normalised"] == [True, True]
    rows = [r for r in result.run.read_metrics() if "episodic_return" in r and r["stage"] == 1]
    expected = sum((r["episodic_return"] + 8.0) / 8.0 for r in rows) / len(rows)
    assert len(rows) == 2 and out["per_stage"][1] == pytest.approx(expected)


def test_goal_rotation_curriculum_turns_135_degrees_and_scores_by_the_env():
    import numpy as np

    from curricula import load_curriculum

    c = load_curriculum("nav2d_goal_rotation")
    assert len(c.stages) >= 20 and not c.task_id_obs
    goals = [np.array(dict(c.task(s.tasks[0]).params)["goal"]) for s in c.stages]
    assert np.allclose([np.linalg.norm(g) for g in goals], 0.4, atol=1e-3)
    for a, b in zip(goals, goals[1:]):
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))) == pytest.approx(135.0, abs=0.05)
    built = c.build()
    for entry in c.tasks:  # return_range: standing still -> 0, the greedy clipped path -> 1
        task = built.tasks[entry.name][0]
        goal = np.array(task.param("goal"))
        returns = []
        for policy in ("still", "greedy"):
            env = built.make_env(entry.name, task, seed=0)
            obs, _ = env.reset(seed=0)
            total, done = 0.0, False
            while not done:
                action = np.zeros(2) if policy == "still" else np.clip(goal - obs, -0.1, 0.1)
                obs, r, term, trunc, _ = env.step(action.astype(np.float32))
                total, done = total + r, term or trunc
            returns.append(total)
        assert returns == pytest.approx(list(entry.return_range), abs=2e-3)
