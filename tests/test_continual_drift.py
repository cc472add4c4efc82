"""Drift detection: Page-Hinkley (two-sided) and ADWIN find a mean shift within the expected
delay, rarely fire on stationary streams, report the caller's step index, reset, and resume
identically from a state dict."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from continual.drift import (
    ADWINConfig,
    DriftMonitor,
    PageHinkleyConfig,
    StreamDetector,
    make_detector,
)
from continual.metrics import detection_scores

# CUSUM design for unit-variance noise: δ = half the shift worth detecting (1σ), λ = 25σ
PH = PageHinkleyConfig(min_instances=30, delta=0.5, threshold=25.0, alpha=1.0, mode="both")
CHANGE = 1000


def stream(shift: float, seed: int, n_before: int = CHANGE, n_after: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, n_before), rng.normal(shift, 1, n_after)])


def detections(kind: str, config, values: np.ndarray) -> list[int]:
    det = StreamDetector(kind, config)
    return [t for t, v in enumerate(values) if det.update(v, step=t)]


@pytest.mark.parametrize(
    "kind, config, max_delay",
    [
        ("page_hinkley", PH, 40),  # ~ λ / (shift − δ) = 17 steps, plus noise
        ("adwin", ADWINConfig(), 2 * 32),  # checks every clock = 32 values
    ],
)
@pytest.mark.parametrize("shift", [2.0, -2.0])
def test_a_mean_shift_is_detected_within_the_expected_delay(kind, config, max_delay, shift):
    delays = []
    for seed in range(10):
        scores = detection_scores(
            [CHANGE],
            detections(kind, config, stream(shift, seed)),
            horizon=CHANGE + 400,
            max_delay=max_delay,
        )
        assert scores.missed == 0, f"seed {seed}: no detection within {max_delay} steps"
        assert scores.false_alarms == 0
        delays.append(scores.delays[0])
    assert 0 < np.mean(delays) <= max_delay


@pytest.mark.parametrize("kind, config", [("page_hinkley", PH), ("adwin", ADWINConfig())])
def test_stationary_streams_rarely_raise_alarms(kind, config):
    fired = [len(detections(kind, config, stream(0.0, 1000 + s, 2000, 0))) for s in range(40)]
    assert sum(f > 0 for f in fired) <= 1, fired  # at most 1 of 40 streams of 2000 steps


def test_one_sided_page_hinkley_misses_a_decrease_that_two_sided_catches():
    values = stream(-2.0, seed=3)
    up = PageHinkleyConfig(**{**PH.__dict__, "mode": "up"})
    assert detections("page_hinkley", up, values) == []
    assert len(detections("page_hinkley", PH, values)) >= 1


def test_scale_makes_thresholds_unit_free():
    values = 100.0 * stream(2.0, seed=4)
    assert detections("page_hinkley", PH, values)[0] < CHANGE  # raw units: λ=25 is tiny
    det = StreamDetector("page_hinkley", PH, scale=100.0)
    fired = [t for t, v in enumerate(values) if det.update(v)]
    assert fired and CHANGE <= fired[0] <= CHANGE + 40


def test_monitor_reports_steps_resets_all_streams_and_resumes_from_a_state_dict():
    def monitor():
        return DriftMonitor(
            {"return": StreamDetector("page_hinkley", PH), "loss": StreamDetector("adwin")}
        )

    ret = stream(-3.0, seed=5, n_after=600)
    loss = stream(0.0, seed=6, n_after=600)
    a = monitor()
    fired = []
    for t in range(800):
        fired += a.update(10 * t, **{"return": ret[t], "loss": loss[t]})
    state = a.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = monitor()
    b.load_state_dict(torch.load(buf, weights_only=True))
    for t in range(800, len(ret)):
        got_a = a.update(10 * t, **{"return": ret[t], "loss": loss[t]})
        got_b = b.update(10 * t, **{"return": ret[t], "loss": loss[t]})
        assert got_a == got_b
        fired += got_a
    assert a.detections == b.detections == fired
    assert [d.stream for d in fired] == ["return"]
    assert CHANGE * 10 <= fired[0].step <= (CHANGE + 40) * 10 and fired[0].step % 10 == 0
    # the detection reset both streams: the loss window holds only the values after it
    assert a.streams["loss"].detector.width == len(loss) - 1 - fired[0].step // 10
    a.reset()
    assert a.streams["return"].state_dict()["history"].numel() == 0


def test_bad_input_raises_value_errors():
    det = StreamDetector("page_hinkley", PH)
    with pytest.raises(ValueError, match="value must be finite"):
        det.update(float("nan"))
    with pytest.raises(ValueError, match="kind must be one of"):
        make_detector("cusum")
    with pytest.raises(ValueError, match="page_hinkley needs a PageHinkleyConfig"):
        make_detector("page_hinkley", ADWINConfig())
    with pytest.raises(ValueError, match="mode must be 'up', 'down' or 'both'"):
        make_detector("page_hinkley", PageHinkleyConfig(mode="sideways"))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        StreamDetector(scale=0.0)
    mon = DriftMonitor({"r": StreamDetector()})
    with pytest.raises(ValueError, match=r"unknown streams \['x'\]"):
        mon.update(0, x=1.0)
    with pytest.raises(ValueError, match="state is for page_hinkley"):
        StreamDetector("adwin").load_state_dict(det.state_dict())
