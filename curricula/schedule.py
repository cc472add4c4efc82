"""The stage scheduler: a curriculum's stage durations in whole learner iterations.

A learner consumes ``steps_per_iteration`` env steps per iteration (``num_envs * num_steps`` for
PPO), so stage ``s`` lasts ``iterations[s] = max(1, steps_s // steps_per_iteration)`` iterations,
and its actual budget is ``iterations[s] * steps_per_iteration`` steps (at most one iteration
short of the curriculum's number). Stage ``s`` covers global iterations
``[start_iteration[s], start_iteration[s] + iterations[s])`` and env steps
``[start_step[s], start_step[s] + steps[s])``; the task boundaries are ``start_step[1:]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .curriculum import Curriculum

__all__ = ["StageSchedule"]


@dataclass(frozen=True)
class StageSchedule:
    """Stage ``s`` in iterations and env steps (see the module docstring)."""

    iterations: tuple[int, ...]
    steps_per_iteration: int

    @classmethod
    def from_curriculum(cls, curriculum: Curriculum, steps_per_iteration: int) -> StageSchedule:
        if isinstance(steps_per_iteration, bool) or steps_per_iteration < 1:
            raise ValueError(f"steps_per_iteration must be >= 1, got {steps_per_iteration}")
        its = tuple(max(1, s.steps // steps_per_iteration) for s in curriculum.stages)
        return cls(its, int(steps_per_iteration))

    @property
    def num_stages(self) -> int:
        return len(self.iterations)

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations)

    @property
    def total_steps(self) -> int:
        return self.total_iterations * self.steps_per_iteration

    def start_iteration(self, stage: int) -> int:
        self._check(stage)
        return sum(self.iterations[:stage])

    def start_step(self, stage: int) -> int:
        return self.start_iteration(stage) * self.steps_per_iteration

    def stage_steps(self, stage: int) -> int:
        self._check(stage)
        return self.iterations[stage] * self.steps_per_iteration

    @property
    def boundaries(self) -> list[int]:
        """Env steps at which stages 1, 2, ... begin (the true task switches)."""
        return [self.start_step(s) for s in range(1, self.num_stages)]

    def locate(self, iteration: int) -> tuple[int, int]:
        """``(stage, iteration within it)`` of global iteration ``iteration`` (0-based)."""
        if not 0 <= iteration < self.total_iterations:
            raise ValueError(f"iteration must be in [0, {self.total_iterations}), got {iteration}")
        for s, n in enumerate(self.iterations):
            if iteration < n:
                return s, iteration
            iteration -= n
        raise AssertionError("unreachable")

    def _check(self, stage: int) -> None:
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}")
