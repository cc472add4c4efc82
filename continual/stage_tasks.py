"""A curriculum stage as the data source of a trainer.

The harness owns the curriculum's clock; at every stage boundary it points the learner's trainer
at the next stage's tasks, whether or not the learner is told that a stage ended. What that means
depends on the trainer:

- PPO (:class:`StageEpisodes`): one vector env over the stage's tasks (``num_envs`` sub-envs,
  :meth:`curricula.BuiltCurriculum.assignments`), episodes running on across iterations;
- RL² (:class:`StageTrials`): the same vector env, one fresh trial per sub-env every iteration;
- the MAML family (:class:`StageFamily`): the stage's tasks as a task family, from which every
  outer iteration samples its meta-batch.

:class:`StageEpisodes` and :class:`StageTrials` are :class:`metarl.ppo.BatchSource` s.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from curricula import BuiltCurriculum
from metarl.ppo import episode_targets, trial_targets
from metarl.rollout import Rollout
from metarl.tasks import Task
from metarl.trajectory import Trajectory
from ssm.util import legacy_stream_seed

__all__ = ["StageEpisodes", "StageFamily", "StageTrials"]


class StageEpisodes:
    """PPO on the current stage's vector env: ``num_steps`` per env per iteration, episodes
    continuing across iterations (and restarting, seeded, at every switch)."""

    reset_state = "episode"

    def __init__(self, num_envs: int, num_steps: int, fused_step: bool = False):
        self.num_steps = num_steps
        self.steps_per_iteration = num_envs * num_steps
        self.rollout: Rollout | None = None
        self.fused_step = fused_step  # act through ssm.fast_step (ppo.fused_step)

    def bind(self, policy: torch.nn.Module, generator: torch.Generator) -> None:
        self.policy, self.generator = policy, generator

    def switch(self, envs: gym.vector.VectorEnv, task_ids: list[int], seed: int) -> None:
        """Act in ``envs`` from now on: fresh episodes, seeded ``seed``."""
        if self.rollout is None:
            self.rollout = Rollout(
                self.policy,
                envs,
                reset_state=self.reset_state,
                episodes_per_trial=getattr(self, "episodes_per_trial", None),
                generator=self.generator,
                task_ids=task_ids,
                fused_step=self.fused_step,
            )
        else:
            self.rollout.envs.close()
        self.rollout.new_trial(seed=seed, envs=envs, task_ids=task_ids)

    def _rollout(self) -> Rollout:
        if self.rollout is None:
            raise RuntimeError("the stage has no envs yet: the harness calls set_tasks first")
        return self.rollout

    def collect(self, iteration: int) -> Trajectory:
        return self._rollout().collect(self.num_steps)

    def targets(self, traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        return episode_targets(traj, gamma, gae_lambda)

    def episode_returns(self, traj: Trajectory) -> list[float]:
        return traj.episode_returns()

    def restart(self, iteration: int) -> None:
        """Nothing here: after a resume the harness switches to the stage's envs afresh."""

    def close(self) -> None:
        if self.rollout is not None:
            self.rollout.envs.close()


class StageTrials(StageEpisodes):
    """RL² on the current stage's vector env: every iteration one fresh trial of
    ``episodes_per_trial`` episodes per env (the policy state kept across them), seeded from the
    run seed and the iteration; GAE over the trial."""

    reset_state = "trial"

    def __init__(self, num_envs: int, episodes_per_trial: int, max_episode_steps: int, seed: int):
        self.episodes_per_trial = episodes_per_trial
        self.trial_steps = episodes_per_trial * max_episode_steps
        self.seed = seed
        super().__init__(num_envs, self.trial_steps)

    def collect(self, iteration: int) -> Trajectory:
        rollout = self._rollout()
        rollout.new_trial(seed=legacy_stream_seed(self.seed, iteration))
        return rollout.collect(self.trial_steps)

    def targets(self, traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        return trial_targets(traj, gamma, gae_lambda)

    def episode_returns(self, traj: Trajectory) -> list[float]:
        return traj.rewards.sum(0).double().tolist()  # the trial is the episode


class StageFamily:
    """The tasks of a stage's entries as a task family (what a meta-learner samples from).

    ``sample(n, split, seed)`` draws ``n`` of the stage's task specs (entries take turns, each
    cycling through its own specs from a seeded offset, as
    :meth:`curricula.BuiltCurriculum.assignments` does); ``make_vector_env`` builds them with the
    curriculum's wrappers (the task one-hot, when the curriculum asks for it)."""

    def __init__(self, built: BuiltCurriculum, names: Sequence[str]):
        if not names:
            raise ValueError("a stage needs at least one task entry")
        self.built, self.names = built, list(names)
        self.observation_space = built.observation_space
        self.action_space = built.action_space
        self.max_episode_steps = built.max_episode_steps
        families = [built.family_of(n) for n in self.names]
        self.reports_success = any(getattr(f, "reports_success", False) for f in families)
        self.name = "stage:" + "+".join(self.names)
        self._entry_of: dict[Task, str] = {}
        for n in self.names:
            for task in built.tasks[n]:
                self._entry_of[task] = n

    def entry_of(self, task: Task) -> str:
        """The curriculum entry a task spec of this stage belongs to."""
        return self._entry_of[task]

    def sample(self, n: int, split: str = "train", seed: int | None = None) -> list[Task]:
        """``n`` task specs of the stage (``split`` is the curriculum's business: its entries
        already name their split)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rng = np.random.default_rng(seed)
        offset = int(rng.integers(0, 1 << 30))
        out = []
        for i in range(n):
            name = self.names[(offset + i) % len(self.names)]
            specs = self.built.tasks[name]
            out.append(specs[(offset + i // len(self.names)) % len(specs)])
        return out

    def make_vector_env(
        self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None
    ) -> gym.vector.VectorEnv:
        assignments = [(self._entry_of[t], t) for t in tasks for _ in range(envs_per_task)]
        return self.built.vector_env(assignments, seed=seed)
