"""``RayConfig``: where and how the Ray backend runs (read without importing Ray)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RayConfig:
    """The Ray backend (``backend: ray``): rollout workers as Ray actors, one slice of the task
    batch each."""

    address: str | None = None
    """cluster to join: None starts (or reuses) a Ray instance on this machine, ``auto`` joins the
    cluster this machine is part of (after ``ray start``), ``ray://HOST:10001`` a remote cluster's
    client server, ``HOST:6379`` a head node's GCS"""
    num_workers: int = 2
    """rollout worker actors; a meta-batch is split into this many contiguous task slices"""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker (its scheduling resource, not a thread limit)"""
    torch_threads: int = 1
    """torch intra-op threads inside each worker"""
    num_cpus: int | None = None
    """CPUs of a Ray instance this run starts itself (None: Ray counts the machine's)"""
    max_failures: int = 3
    """times one slice may be lost to a dying worker before the collection fails"""
    adapt_on_workers: bool = True
    """first-order meta-learners (FOMAML, Reptile, MAML while first order) adapt on the workers
    and return per-slice meta-gradients; the outer step stays on the learner"""
    log_to_driver: bool = False
    """forward the workers' stdout/stderr to this process"""

    def check(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"ray.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker < 0:
            raise ValueError(f"ray.cpus_per_worker must be >= 0, got {self.cpus_per_worker}")
        if self.torch_threads < 1:
            raise ValueError(f"ray.torch_threads must be >= 1, got {self.torch_threads}")
        if self.max_failures < 0:
            raise ValueError(f"ray.max_failures must be >= 0, got {self.max_failures}")
