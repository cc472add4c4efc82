"""Where rollouts run: in this process (``backend: local``) or on Ray actors (``backend: ray``).

Both serve the same :class:`Collector` interface (see :mod:`metarl.collector`, which also holds
the local one); the Ray one (:mod:`metarl.backends.ray_collector`) imports Ray only when it is
built, and names the install command when Ray is missing.

This package sits above :mod:`metarl.meta`: Ray workers run first-order adaptation with meta's
learners. Trainers never import it; they take a collector (the run harness builds one here).
"""

from metarl.collector import Collector, LocalCollector, TaskSet

from .config import RayConfig
from .factory import make_collector
from .ray_collector import (
    INSTALL_HINT,
    RayCollector,
    WorkerLost,
    connect_ray,
    gather_retrying,
    require_ray,
    task_slices,
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
