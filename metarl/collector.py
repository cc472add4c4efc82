"""Collectors: the rollout interface every trainer collects through, and the local one.

A :class:`Collector` owns a policy and a task family. ``collector.open(tasks, envs_per_task)``
builds the environments of a task batch once and returns a :class:`TaskSet`; every
``task_set.collect(num_steps, seed, params=..., generator=...)`` then resets those envs with
``seed + sub-env index`` and returns one ``(num_steps, N·B)`` :class:`~metarl.trajectory.Trajectory`
(task ``i``'s envs are columns ``[i·B, (i+1)·B)``), acting with the policy's current parameters or
with per-task ``params`` stacked over tasks. Support, resampled support and query of one
meta-batch share one task set.

:class:`LocalCollector` runs everything in this process (one vector env).
:class:`metarl.backends.ray_collector.RayCollector` splits the task batch into contiguous slices,
one per Ray actor, and joins the slices: same trajectories, bit for bit where the arithmetic
agrees (see :mod:`metarl.backends.ray_collector`).

This module sits below both the trainers (:mod:`metarl.meta`, :mod:`metarl.rl2`) and the backends
(:mod:`metarl.backends`, which serve meta-learners and so import :mod:`metarl.meta`): a trainer
takes any :class:`Collector` and builds a :class:`LocalCollector` when given none, without
importing the backends.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metarl.task_rollout import collect_tasks
from metarl.tasks import Task, TaskFamily
from metarl.trajectory import Trajectory
from ssm.policy import SequencePolicy

__all__ = ["Collector", "LocalCollector", "TaskSet"]


class TaskSet(abc.ABC):
    """The envs of one task batch, opened by :meth:`Collector.open`; a context manager."""

    def __init__(self, tasks: Sequence[Task], envs_per_task: int):
        self.tasks, self.envs_per_task = list(tasks), int(envs_per_task)

    @abc.abstractmethod
    def collect(
        self,
        num_steps: int,
        seed: int,
        params: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> Trajectory:
        """A fresh ``(num_steps, N·B)`` trajectory: every sub-env reset with ``seed + index``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the envs."""

    def __enter__(self) -> TaskSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Collector(abc.ABC):
    """Collects trajectories of task batches for one policy and task family."""

    backend: str = "?"

    def __init__(self, policy: SequencePolicy, family: TaskFamily, vectorize: bool = True):
        self.policy, self.family, self.vectorize = policy, family, bool(vectorize)

    @abc.abstractmethod
    def open(
        self,
        tasks: Sequence[Task],
        envs_per_task: int,
        env_seed: int | None = None,
        **rollout_kwargs: Any,
    ) -> TaskSet:
        """Build the envs of ``tasks`` (``envs_per_task`` each; sub-env ``j`` constructed with
        ``env_seed + j`` where given). ``rollout_kwargs`` go to :class:`~metarl.rollout.Rollout`
        (``reset_state``, ``episodes_per_trial``)."""

    def stats(self) -> dict[str, Any]:
        """Counters for logs: the backend, and for Ray the workers and failures survived."""
        return {"backend": self.backend}

    def close(self) -> None:  # noqa: B027 - optional hook; local collectors hold nothing
        """Release workers (no-op locally)."""

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LocalTaskSet(TaskSet):
    def __init__(self, collector: LocalCollector, tasks, envs_per_task, env_seed, rollout_kwargs):
        super().__init__(tasks, envs_per_task)
        self.collector, self.rollout_kwargs = collector, rollout_kwargs
        self.envs = collector.family.make_vector_env(
            self.tasks, envs_per_task=self.envs_per_task, seed=env_seed
        )

    def collect(self, num_steps, seed, params=None, generator=None, deterministic=False):
        c = self.collector
        return collect_tasks(
            c.policy,
            c.family,
            self.tasks,
            self.envs_per_task,
            num_steps,
            seed,
            params=params,
            generator=generator,
            deterministic=deterministic,
            vectorize=c.vectorize,
            envs=self.envs,
            **self.rollout_kwargs,
        )

    def close(self) -> None:
        self.envs.close()


class LocalCollector(Collector):
    """Everything in this process: one (synchronous) vector env per task set."""

    backend = "local"

    def open(self, tasks, envs_per_task, env_seed=None, **rollout_kwargs) -> TaskSet:
        return _LocalTaskSet(self, tasks, envs_per_task, env_seed, rollout_kwargs)
