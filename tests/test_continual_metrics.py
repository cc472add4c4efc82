"""Continual World metrics on hand-computed examples, detection scores, plots, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from continual.metrics import (
    average_performance,
    average_performance_curve,
    curve_auc,
    detection_scores,
    forgetting,
    forward_transfer,
    performance_matrix_from_curves,
    plot_performance_matrix,
    plot_task_curves,
    summarize,
)

# R[i, j]: task j after stage i
R = np.array(
    [
        [0.9, 0.1, 0.0],
        [0.6, 0.8, 0.2],
        [0.5, 0.7, 1.0],
    ]
)


def test_average_performance_and_forgetting_by_hand():
    assert average_performance(R) == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    f, per_task = forgetting(R)
    np.testing.assert_allclose(per_task, [0.9 - 0.5, 0.8 - 0.7, 0.0])
    assert f == pytest.approx(0.5 / 3)  # averaged over all N = 3 tasks, as in CW
    assert average_performance_curve([[0, 1], [1, 1]]).tolist() == [0.5, 1.0]


def test_forward_transfer_by_hand():
    # AUC of [0, .5, 1] on [0, 1, 2] = (0.25 + 0.75) / 2 = 0.5; reference [0, 0, .5] -> 0.125
    assert curve_auc([0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert curve_auc([0.0, 0.0, 0.5]) == pytest.approx(0.125)
    assert curve_auc([0.0, 1.0, 1.0], steps=[0, 1, 3]) == pytest.approx((0.5 + 2.0) / 3)
    ft, per_task = forward_transfer(
        [[0.0, 0.5, 1.0], [0.2, 0.2, 0.2], [1.0, 1.0, 1.0]],
        [[0.0, 0.0, 0.5], [0.6, 0.6, 0.6], [1.0, 1.0, 1.0]],
    )
    assert per_task[0] == pytest.approx((0.5 - 0.125) / (1 - 0.125))
    assert per_task[1] == pytest.approx((0.2 - 0.6) / (1 - 0.6))  # negative transfer
    assert math.isnan(per_task[2])  # the reference is perfect: undefined
    assert ft == pytest.approx((per_task[0] + per_task[1]) / 2)


def test_detection_scores_by_hand():
    s = detection_scores([100, 200], [50, 110, 120, 260], horizon=300)
    assert s.delays == [10, 60]
    assert s.mean_delay == pytest.approx(35.0)
    assert (s.missed, s.false_alarms) == (0, 2)  # 50 (before any change) and 120 (a repeat)
    assert s.false_alarm_rate == pytest.approx(2 / 300)
    late = detection_scores([100, 200], [50, 110, 120, 260], max_delay=30)
    assert late.delays == [10, None] and late.missed == 1 and late.false_alarms == 3
    none = detection_scores([100], [])
    assert none.missed == 1 and math.isnan(none.mean_delay) and none.false_alarm_rate is None


def test_performance_matrix_from_curves_and_summary():
    steps = [0, 10, 20, 30]
    curves = [[0.0, 0.9, 0.6, 0.5], [0.0, 0.1, 0.8, 0.7], [0.0, 0.0, 0.2, 1.0]]
    got = performance_matrix_from_curves(curves, steps, stage_ends=[10, 25, 30])
    np.testing.assert_allclose(got, R)
    out = summarize(R, [[0, 1]], [[0, 0.5]])
    assert out["average_performance"] == pytest.approx(average_performance(R))
    assert out["forward_transfer"] == pytest.approx((0.5 - 0.25) / 0.75)


def test_plots_are_written_as_png(tmp_path):
    heat = plot_performance_matrix(R, tmp_path / "plots" / "R.png", task_names=["a", "b", "c"])
    steps = np.arange(30)
    curves = np.random.default_rng(0).uniform(size=(3, 30))
    lines = plot_task_curves(steps, curves, tmp_path / "curves.png", boundaries=[10, 20])
    for path in (heat, lines):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_input_raises_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"square \(N stages, N tasks\).*got shape \(2, 3\)"):
        average_performance(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite everywhere"):
        forgetting([[1.0, np.nan], [0.5, 0.5]])
    with pytest.raises(ValueError, match="one reference curve per task"):
        forward_transfer([[0, 1]], [])
    with pytest.raises(ValueError, match="strictly increasing"):
        curve_auc([0, 1, 2], steps=[0, 2, 1])
    with pytest.raises(ValueError, match="boundaries must be strictly increasing"):
        detection_scores([200, 100], [150])
    with pytest.raises(ValueError, match=r"lie in \[0, horizon=100\)"):
        detection_scores([50], [120], horizon=100)
    with pytest.raises(ValueError, match="need 3 task names"):
        plot_performance_matrix(R, tmp_path / "x.png", task_names=["a"])
    with pytest.raises(ValueError, match=r"curves must be \(N tasks, E=4 points\)"):
        plot_task_curves(np.arange(4), np.zeros((2, 5)), tmp_path / "y.png")
