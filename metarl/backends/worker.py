"""A rollout worker: the envs of one slice of a task batch, and the policy to act in them.

:class:`RolloutWorker` is plain Python; :mod:`metarl.backends.ray_collector` runs it as a Ray
actor. Every request is self-contained (the slice's tasks, seeds and the generator state to
sample with), so a worker that is replaced after a crash re-collects a slice exactly. Envs are
cached per task set between requests (support and query of one meta-batch reuse them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from metarl.meta.learners import make_learner
from metarl.meta.train import collect_meta_batch, restore_inner_lrs
from metarl.task_rollout import collect_tasks
from metarl.tasks import Task, TaskFamily
from ssm.policy import SequencePolicy

__all__ = ["RolloutWorker", "SliceRequest"]


@dataclass
class SliceRequest:
    """Collect tasks ``[task_offset, task_offset + len(tasks))`` of a batch of ``total_tasks``."""

    key: int
    """the task set this slice belongs to (its envs are cached under it)"""
    tasks: list[Task]
    task_offset: int
    total_tasks: int
    envs_per_task: int
    env_seed: int | None = None
    rollout_kwargs: dict[str, Any] = field(default_factory=dict)


class RolloutWorker:
    """Holds a policy copy and the envs of its task slices; see the module docstring."""

    def __init__(
        self,
        policy: SequencePolicy,
        family: TaskFamily,
        torch_threads: int = 1,
        vectorize: bool = True,
        meta_config: Any = None,
    ):
        torch.set_num_threads(int(torch_threads))
        self.policy, self.family, self.vectorize = policy, family, bool(vectorize)
        self.meta_config = meta_config
        self._learner = None
        self._sets: dict[int, Any] = {}  # key -> vector env of that slice

    def pid(self) -> int:
        return os.getpid()

    def _envs(self, req: SliceRequest):
        if req.key not in self._sets:
            seed = None
            if req.env_seed is not None:
                seed = req.env_seed + req.task_offset * req.envs_per_task
            self._sets[req.key] = self.family.make_vector_env(
                list(req.tasks), envs_per_task=req.envs_per_task, seed=seed
            )
        return self._sets[req.key]

    def release(self, key: int) -> None:
        envs = self._sets.pop(key, None)
        if envs is not None:
            envs.close()

    def _load(self, policy_state: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(policy_state)

    def _collector(self, req: SliceRequest, generator):
        def collect(seed: int, params=None, deterministic: bool = False):
            return collect_tasks(
                self.policy,
                self.family,
                req.tasks,
                req.envs_per_task,
                self._num_steps,
                seed,
                params=params,
                generator=generator,
                deterministic=deterministic,
                vectorize=self.vectorize,
                envs=self._envs(req),
                task_offset=req.task_offset,
                total_tasks=req.total_tasks,
                **req.rollout_kwargs,
            )

        return collect

    @staticmethod
    def _generator(state: torch.Tensor | None) -> torch.Generator | None:
        if state is None:
            return None
        gen = torch.Generator()
        gen.set_state(state)
        return gen

    def collect(
        self,
        req: SliceRequest,
        policy_state: dict[str, torch.Tensor],
        num_steps: int,
        seed: int,
        params: dict[str, torch.Tensor] | None = None,
        generator_state: torch.Tensor | None = None,
        deterministic: bool = False,
    ):
        """One slice's trajectory, and the generator state after it (``None`` if none given)."""
        self._load(policy_state)
        self._num_steps = int(num_steps)
        gen = self._generator(generator_state)
        traj = self._collector(req, gen)(seed, params, deterministic)
        return traj, None if gen is None else gen.get_state()

    def first_order_meta_batch(
        self,
        req: SliceRequest,
        policy_state: dict[str, torch.Tensor],
        inner_lrs: dict[str, torch.Tensor],
        num_steps: int,
        seed: int,
        iteration: int,
        generator_state: torch.Tensor,
    ):
        """Support -> first-order adaptation -> query -> the slice's first-order meta-gradient
        (mean over its tasks); returns ``(MetaBatch of the slice, MetaGradient, generator
        state)``. The outer step is the learner's."""
        if self.meta_config is None:
            raise RuntimeError("this worker was built without a meta config")
        if self._learner is None:
            self._learner = make_learner(self.policy, self.meta_config)
        self._load(policy_state)
        restore_inner_lrs(self._learner, inner_lrs)
        self._num_steps = int(num_steps)
        gen = self._generator(generator_state)
        n = len(req.tasks)
        batch = collect_meta_batch(
            self._learner, self._collector(req, gen), n, seed, self.meta_config.resample_support
        )
        mg = self._learner.meta_gradient(
            batch.supports, batch.query, first_order=True, iteration=iteration
        )
        return batch.without_batches(), mg, gen.get_state()
