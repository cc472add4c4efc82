"""The sequence plots: stages shaded by the task they train, bands over seeds, the training
return; checked on the figures' artists, not on pixels."""

from __future__ import annotations

import numpy as np
import pytest

from continual import metrics as cw
from continual.report import plot_seed_curves


def _figure_of(monkeypatch):
    """Capture the Figure a plot function saves."""
    seen = {}
    real = cw._save

    def save(fig, path):
        seen["fig"] = fig
        return real(fig, path)

    monkeypatch.setattr(cw, "_save", save)
    return seen


def test_task_curves_shade_each_stage_and_draw_bands(tmp_path, monkeypatch):
    seen = _figure_of(monkeypatch)
    steps = [0, 10, 20, 30, 40]
    curves = np.arange(10, dtype=float).reshape(2, 5) / 10
    cw.plot_task_curves(
        steps,
        curves,
        tmp_path / "c.png",
        boundaries=[20],
        task_names=["a", "b"],
        lower=curves - 0.1,
        upper=curves + 0.1,
    )
    ax = seen["fig"].axes[0]
    spans = [p for p in ax.patches]  # one axvspan per stage
    assert len(spans) == 2
    assert sorted(round(p.get_x()) for p in spans) == [0, 20]
    assert len(ax.collections) == 2  # one CI band per task
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["training: a", "training: b"]
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(ValueError, match="lower and upper"):
        cw.plot_task_curves(steps, curves, tmp_path / "d.png", lower=curves[:1], upper=curves)


def test_training_curve_has_a_moving_average(tmp_path, monkeypatch):
    seen = _figure_of(monkeypatch)
    y = np.array([0.0, 1, 2, 3, 4, 5])
    cw.plot_training_curve(np.arange(6) * 100, y, tmp_path / "t.png", [300], ["x", "y"], window=3)
    ax = seen["fig"].axes[0]
    avg = [line for line in ax.lines if line.get_label() == "mean of 3"][0]
    np.testing.assert_allclose(avg.get_ydata(), [1, 2, 3, 4])
    np.testing.assert_allclose(avg.get_xdata(), [200, 300, 400, 500])
    with pytest.raises(ValueError, match="equally long"):
        cw.plot_training_curve([1, 2], [1.0], tmp_path / "u.png")


def test_seed_bands_are_the_ci_over_seeds(tmp_path, monkeypatch):
    seen = _figure_of(monkeypatch)
    base = {"eval_steps": [0, 1], "boundaries": [1], "stages": ["a", "b"]}
    results = [{**base, "curves": [[v, v], [0.0, 0.0]]} for v in (0.0, 1.0, 2.0)]
    assert plot_seed_curves(results, tmp_path / "s.png", "t") is not None
    ax = seen["fig"].axes[0]
    line_a = [line for line in ax.lines if line.get_label() == "a"][0]
    np.testing.assert_allclose(line_a.get_ydata(), [1.0, 1.0])  # the mean over seeds
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    np.testing.assert_allclose([band.min(), band.max()], [1 - half, 1 + half])
    results[1] = {**results[1], "eval_steps": [0, 2]}
    assert plot_seed_curves(results, tmp_path / "x.png", "t") is None
