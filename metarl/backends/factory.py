"""``backend: local | ray`` -> a :class:`~metarl.collector.Collector`, the one place that picks."""

from __future__ import annotations

from metarl.collector import Collector, LocalCollector
from metarl.meta.config import MetaConfig
from metarl.tasks import TaskFamily
from ssm.policy import SequencePolicy

from .config import RayConfig
from .ray_collector import RayCollector  # imports the ray package only when one is built

__all__ = ["make_collector"]


def make_collector(
    backend: str,
    policy: SequencePolicy,
    family: TaskFamily,
    ray_config: RayConfig | None = None,
    vectorize: bool = True,
    meta_config: MetaConfig | None = None,
) -> Collector:
    """A :class:`LocalCollector` (``backend="local"``) or a :class:`RayCollector` (``"ray"``,
    configured by ``ray_config``; with ``meta_config`` its workers can also run first-order
    adaptation)."""
    if backend == "local":
        return LocalCollector(policy, family, vectorize)
    if backend == "ray":
        return RayCollector(policy, family, ray_config or RayConfig(), vectorize, meta_config)
    raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
