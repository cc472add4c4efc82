"""Drift detection on scalar streams (episode return, loss, TD error, observation statistics).

Wraps river's detectors (river 0.26):

- ``page_hinkley``: ``river.drift.PageHinkley(min_instances, delta, threshold, alpha, mode)``, a
  CUSUM test on the deviation from the running mean (Page 1954). With ``x̄_t`` the mean so far::

      U_t = α U_{t−1} + (x_t − x̄_t − δ)     fires when U_t − min_{s≤t} U_s > λ   (increase)
      D_t = α D_{t−1} + (x_t − x̄_t + δ)     fires when max_{s≤t} D_s − D_t > λ   (decrease)

  ``mode="both"`` (the default here) watches both directions. δ and λ are in the units of the
  stream *after* dividing by ``scale``: with ``scale`` set to the stream's noise level,
  ``delta`` ≈ half the smallest shift worth detecting and ``threshold`` ≈ 5-10 is a
  classic CUSUM design.
- ``adwin``: ``river.drift.ADWIN(delta, clock, max_buckets, min_window_length, grace_period)``
  (Bifet & Gavaldà 2007): it keeps the longest recent window whose two halves have statistically
  equal means (confidence ``delta``) and fires when it has to drop the older part. It checks
  every ``clock`` values, so delays come in multiples of ``clock``.

A detector restarts from scratch after each detection (river's own behaviour, made explicit
here). :class:`StreamDetector` watches one stream; :class:`DriftMonitor` watches several, reports
:class:`Detection` records with the caller's step index, and can reset every stream when one
fires (the task changed, so every statistic is stale). State dicts replay the values seen
since the last reset into a fresh detector, which reproduces it exactly (both detectors are
deterministic); so a state holds one float64 per value since the last reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

__all__ = [
    "DETECTOR_KINDS",
    "DRIFT_SCHEMA_VERSION",
    "ADWINConfig",
    "Detection",
    "DriftMonitor",
    "PageHinkleyConfig",
    "StreamDetector",
    "make_detector",
]

DRIFT_SCHEMA_VERSION = 1
DETECTOR_KINDS = ("page_hinkley", "adwin")


@dataclass
class PageHinkleyConfig:
    """``river.drift.PageHinkley`` arguments (river's defaults, but two-sided)."""

    min_instances: int = 30
    """values seen before the test may fire"""
    delta: float = 0.005
    """δ: tolerated drift per step (in units of x / scale)"""
    threshold: float = 50.0
    """λ: the detection threshold (in units of x / scale)"""
    alpha: float = 1 - 0.0001
    """forgetting factor of the cumulative sums"""
    mode: Literal["up", "down", "both"] = "both"
    """watch increases, decreases or both"""


@dataclass
class ADWINConfig:
    """``river.drift.ADWIN`` arguments (river's defaults)."""

    delta: float = 0.002
    """confidence of the test that the window's two parts differ"""
    clock: int = 32
    """check for change every `clock` values"""
    max_buckets: int = 5
    """buckets of each size kept before merging"""
    min_window_length: int = 5
    """smallest sub-window compared"""
    grace_period: int = 10
    """values seen before the test may fire"""


def make_detector(kind: str, config: PageHinkleyConfig | ADWINConfig | None = None):
    """A fresh river detector of ``kind`` (``"page_hinkley"`` or ``"adwin"``)."""
    from river import drift  # imported here: river.drift pulls in scipy (~0.7 s)

    if kind == "page_hinkley":
        cfg = config if config is not None else PageHinkleyConfig()
        if not isinstance(cfg, PageHinkleyConfig):
            raise ValueError(f"page_hinkley needs a PageHinkleyConfig, got {type(cfg).__name__}")
        if cfg.mode not in ("up", "down", "both"):
            raise ValueError(f"mode must be 'up', 'down' or 'both', got {cfg.mode!r}")
        if cfg.threshold <= 0 or cfg.delta < 0 or not 0 < cfg.alpha <= 1:
            raise ValueError(f"invalid Page-Hinkley config {cfg}")
        return drift.PageHinkley(**asdict(cfg))
    if kind == "adwin":
        cfg = config if config is not None else ADWINConfig()
        if not isinstance(cfg, ADWINConfig):
            raise ValueError(f"adwin needs an ADWINConfig, got {type(cfg).__name__}")
        if not 0 < cfg.delta < 1 or cfg.clock < 1:
            raise ValueError(f"invalid ADWIN config {cfg}")
        return drift.ADWIN(**asdict(cfg))
    raise ValueError(f"kind must be one of {DETECTOR_KINDS}, got {kind!r}")


@dataclass(frozen=True)
class Detection:
    """A detection: which stream fired, at which step, on which value."""

    stream: str
    step: int
    value: float


class StreamDetector:
    """One scalar stream watched by one river detector.

    Args:
        kind: ``"page_hinkley"`` or ``"adwin"``.
        config: the detector's config (default: its defaults).
        scale: values are divided by this before the test (their noise level, say).
        name: the stream's name in :class:`Detection` records.
    """

    def __init__(
        self,
        kind: str = "page_hinkley",
        config: PageHinkleyConfig | ADWINConfig | None = None,
        scale: float = 1.0,
        name: str = "stream",
    ):
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.kind = kind
        self.config = (
            config
            if config is not None
            else (PageHinkleyConfig() if kind == "page_hinkley" else ADWINConfig())
        )
        self.scale, self.name = float(scale), name
        self._detector = make_detector(kind, self.config)
        self._history: list[float] = []  # scaled values since the last reset
        self.num_updates = 0
        self.detections: list[Detection] = []

    def update(self, value: float, step: int | None = None) -> bool:
        """Feed one value; True if it completes a detection. ``step`` (default: the number of
        values fed before this one) is what the :class:`Detection` records."""
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"stream {self.name!r}: value must be finite, got {value!r}")
        x /= self.scale
        at = self.num_updates if step is None else int(step)
        self.num_updates += 1
        self._detector.update(x)
        self._history.append(x)
        if self._detector.drift_detected:
            self.detections.append(Detection(self.name, at, float(value)))
            self.reset()
            return True
        return False

    def reset(self) -> None:
        """Forget everything seen so far (detections stay recorded)."""
        self._detector = make_detector(self.kind, self.config)
        self._history = []

    @property
    def detector(self):
        """The wrapped river detector (read it, do not feed it)."""
        return self._detector

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": DRIFT_SCHEMA_VERSION,
            "kind": self.kind,
            "config": asdict(self.config),
            "scale": self.scale,
            "name": self.name,
            "num_updates": self.num_updates,
            "detections": [asdict(d) for d in self.detections],
            "history": torch.tensor(self._history, dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("schema_version") != DRIFT_SCHEMA_VERSION:
            raise ValueError(f"not a drift detector state of schema_version {DRIFT_SCHEMA_VERSION}")
        if state["kind"] != self.kind or state["config"] != asdict(self.config):
            raise ValueError(
                f"state is for {state['kind']} {state['config']}, this detector is "
                f"{self.kind} {asdict(self.config)}"
            )
        self.scale, self.name = float(state["scale"]), str(state["name"])
        self.num_updates = int(state["num_updates"])
        self.detections = [Detection(**d) for d in state["detections"]]
        self.reset()
        for x in state["history"].tolist():
            self._detector.update(x)
            if self._detector.drift_detected:  # cannot happen for a state we wrote
                raise ValueError("replaying the stored history fired the detector")
            self._history.append(x)


class DriftMonitor:
    """Several named streams, each with its own :class:`StreamDetector`.

    Args:
        streams: stream name -> detector.
        reset_all_on_detection: when one stream fires, reset every stream.
    """

    def __init__(self, streams: Mapping[str, StreamDetector], reset_all_on_detection: bool = True):
        if not streams:
            raise ValueError("a DriftMonitor needs at least one stream")
        for name, det in streams.items():
            if not isinstance(det, StreamDetector):
                raise ValueError(f"stream {name!r} must be a StreamDetector")
            det.name = name
        self.streams = dict(streams)
        self.reset_all_on_detection = reset_all_on_detection
        self.detections: list[Detection] = []

    def update(self, step: int, **values: float) -> list[Detection]:
        """Feed the streams named in ``values`` (others are left alone) at ``step``; returns the
        detections this call made."""
        unknown = sorted(set(values) - set(self.streams))
        if unknown:
            raise ValueError(f"unknown streams {unknown}; known: {sorted(self.streams)}")
        fired = []
        for name, value in values.items():
            det = self.streams[name]
            if det.update(value, step):
                fired.append(det.detections[-1])
        if fired and self.reset_all_on_detection:
            self.reset()
        self.detections.extend(fired)
        return fired

    def reset(self) -> None:
        for det in self.streams.values():
            det.reset()

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": DRIFT_SCHEMA_VERSION,
            "reset_all_on_detection": self.reset_all_on_detection,
            "detections": [asdict(d) for d in self.detections],
            "streams": {n: d.state_dict() for n, d in self.streams.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("schema_version") != DRIFT_SCHEMA_VERSION:
            raise ValueError(f"not a drift monitor state of schema_version {DRIFT_SCHEMA_VERSION}")
        if set(state["streams"]) != set(self.streams):
            raise ValueError(
                f"state has streams {sorted(state['streams'])}, this monitor {sorted(self.streams)}"
            )
        self.reset_all_on_detection = bool(state["reset_all_on_detection"])
        self.detections = [Detection(**d) for d in state["detections"]]
        for n, s in state["streams"].items():
            self.streams[n].load_state_dict(s)
