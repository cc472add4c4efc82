"""Families whose tasks are parameter vectors drawn from a seeded stream and split by region."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from metarl.tasks.base import Task, TaskFamily

_MAX_DRAWS_PER_TASK = 1000


class ParametricTaskFamily(TaskFamily):
    """Tasks drawn one at a time from ``np.random.default_rng(seed)``, kept if in ``split``.

    Each draw's split is a fixed function of its parameters (:meth:`split_of`), so train and test
    sets are disjoint for every pair of seeds, and ``sample(n)`` is a prefix of ``sample(n + 1)``.
    """

    @abc.abstractmethod
    def draw_params(self, rng: np.random.Generator) -> dict[str, Any]: ...

    @abc.abstractmethod
    def split_of(self, params: dict[str, Any]) -> str | None:
        """The split these parameters belong to, or ``None`` where the family defines no split."""

    def _sample(self, n: int, split: str, rng: np.random.Generator) -> list[Task]:
        tasks: list[Task] = []
        for _ in range(_MAX_DRAWS_PER_TASK * max(n, 1)):
            if len(tasks) == n:
                break
            params = self.draw_params(rng)
            if self.split_of(params) in (split, None):
                tasks.append(Task.create(self.name, split, len(tasks), params))
        if len(tasks) < n:
            raise RuntimeError(f"{self.name}: split {split!r} is (almost) empty")
        return tasks
