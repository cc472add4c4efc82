"""HalfCheetah-v5 with a task reward; imported only once MuJoCo is known to be installed."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from metarl.tasks.base import Task

CTRL_COST_WEIGHT = 0.05


class TaskHalfCheetahEnv(HalfCheetahEnv):
    """HalfCheetah whose reward is the task's (see :mod:`metarl.tasks.halfcheetah`).

    ``forward_vel`` is gymnasium's ``x_velocity``: the root's x displacement over one step / dt.
    """

    def __init__(self, task: Task) -> None:
        super().__init__(ctrl_cost_weight=CTRL_COST_WEIGHT)
        self.task = task
        self._target_velocity = (
            float(task.param("target_velocity")) if task.family == "halfcheetah-vel" else None
        )
        self._direction = (
            float(task.param("direction")) if task.family == "halfcheetah-dir" else None
        )

    def _get_rew(self, x_velocity: float, action: Any) -> tuple[float, dict[str, float]]:
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        if self._target_velocity is not None:
            task_reward = -abs(float(x_velocity) - self._target_velocity)
        else:
            assert self._direction is not None
            task_reward = self._direction * float(x_velocity)
        return task_reward - ctrl_cost, {"reward_forward": task_reward, "reward_ctrl": -ctrl_cost}
