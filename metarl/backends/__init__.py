"""Where rollouts run: in this process (``backend: local``) or on Ray actors (``backend: ray``).

Both serve the same :class:`Collector` interface (see :mod:`metarl.backends.collector`); the
Ray one (:mod:`metarl.backends.ray_collector`) imports Ray only when it is built, and names the
install command when Ray is missing.
"""

from metarl.collector import Collector, LocalCollector, TaskSet, task_slices

from .config import RayConfig
from .ray_collector import (
    INSTALL_HINT,
    RayCollector,
    WorkerLost,
    connect_ray,
    gather_retrying,
    make_collector,
    require_ray,
)

__all__ = [
    "INSTALL_HINT",
    "Collector",
    "LocalCollector",
    "RayCollector",
    "RayConfig",
    "TaskSet",
    "WorkerLost",
    "connect_ray",
    "gather_retrying",
    "make_collector",
    "require_ray",
    "task_slices",
]
