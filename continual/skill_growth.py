"""A continual run grows a skill library: at every stage end, the policies adapted to a few of
the stage's tasks are stored as skills, with provenance (run, stage, task, adaptation steps).

A trainer plugin (:class:`metarl.plugins.Plugin`) whose ``end_stage`` draws ``tasks`` of the
stage that ends, collects support on them with θ and adapts θ per task with the meta-learner's
own inner loop (PPO and RL²: the policy as it is, one skill per stage). The skills go through a
:class:`metarl.skill_sink.SkillSink` (for ``skills``: the extraction code, θ stored once as the
stage's base and each task's adapted tensors as a delta on it), opened by the harness from the
``metarl.skill_sinks`` entry points, since ``continual`` does not import ``skills``.
"""

from __future__ import annotations

from typing import Any

import torch

from metarl.plugins import Plugin, StageEnd
from metarl.task_rollout import collect_tasks
from ssm.util import derive_seed

__all__ = ["SkillGrowth"]


class SkillGrowth(Plugin):
    """Adapted policies of each ended stage into a skill sink (see the module docstring).

    Args:
        sink: where the skills go.
        trainer: the learner's trainer (its meta-learner, task family, episode length, seed).
        tasks: tasks per stage (meta-learners; one skill per stage otherwise).
        stage_names: the curriculum's stage names (for the skill names).
        episodes: support episodes per task.
    """

    name = "skill_growth"

    def __init__(
        self,
        sink: Any,
        trainer: Any,
        tasks: int,
        stage_names: list[str],
        episodes: int = 4,
    ):
        if tasks < 1 or episodes < 1:
            raise ValueError("skill growth needs tasks >= 1 and episodes >= 1")
        self.sink, self.trainer, self.tasks, self.episodes = sink, trainer, tasks, episodes
        self.stage_names = list(stage_names)
        self.run_name = "run"
        self.added: list[str] = []

    def end_stage(self, end: StageEnd) -> None:
        trainer = self.trainer
        learner = getattr(trainer, "learner", None)
        stage = end.stage
        label = self.stage_names[min(stage, len(self.stage_names) - 1)]
        prefix = f"{self.run_name}/{stage}-{label}"
        provenance = {"run": self.run_name, "stage": stage, "stage_name": label}
        if learner is None:  # PPO, RL²: the policy the stage ended with
            tasks = [{"family": "stage", "split": label, "index": 0}]
            params = [dict(end.params)]
            provenance["adapt_steps"] = 0
        else:
            seed = int(trainer.config.seed)
            drawn = trainer.family.sample(self.tasks, seed=derive_seed(seed, "skills", stage))
            tasks = list(dict.fromkeys(drawn))  # a stage with fewer specs gives fewer skills
            with torch.no_grad():
                support = collect_tasks(
                    end.policy,
                    trainer.family,
                    tasks,
                    self.episodes,
                    trainer.num_steps,
                    derive_seed(seed, "skills-envs", stage, bits=31),
                    generator=torch.Generator().manual_seed(derive_seed(seed, "skills", stage)),
                    vectorize=learner.vectorize,
                )
            stacked = learner.adapt_tasks(dict(end.params), learner.prepare(support, len(tasks)))
            params = [{k: v[i] for k, v in stacked.items()} for i in range(len(tasks))]
            provenance["adapt_steps"] = learner.inner_steps
        self.added += self.sink.add_adapted(
            end.policy,
            tasks,
            params,
            base_name=f"{prefix}/init",
            prefix=prefix,
            provenance=provenance,
        )
