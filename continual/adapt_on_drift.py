"""Adapt on drift: what a deployed meta-learner does when its task distribution changes unseen.

Meta-training collects support with θ and adapts per task; a deployed agent, though, acts with
*one* policy. :class:`ActingPolicy` is that agent, beside meta-training: every iteration it plays
one episode of each of ``tasks`` fresh tasks of the current stage and logs its mean return
(``acting_return``). It acts with θ, except after a drift detection when ``adapt_on_drift`` is on:
then it adapts θ on the newest support batch, all of its tasks as one support set (fresh data of
the new distribution), and acts with those parameters ``φ_drift`` for ``iterations`` iterations
while meta-training goes on (``acting_adapted`` says which). With ``readapt``, every iteration
of that window adapts again, from the current θ on that iteration's support batch, so the acting
parameters follow meta-training instead of staying at the θ of the detection.

The comparison the issue asks for, "the return in the first iterations after each switch, with
and without adapt-on-drift", is then ``acting_return`` over the iterations after each true switch
in two runs that differ only in ``drift.adapt_on_drift`` (:func:`post_switch_returns`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarl.task_rollout import collect_tasks
from ssm.util import derive_seed

__all__ = ["ActingPolicy", "post_switch_returns"]


class ActingPolicy:
    """The acting agent beside a :class:`metarl.meta.MetaTrainer` (see the module docstring)."""

    def __init__(self, adapt_on_drift: bool, iterations: int, tasks: int, readapt: bool = True):
        self.adapt_on_drift, self.iterations, self.tasks = adapt_on_drift, iterations, tasks
        self.readapt = readapt
        self.phi: dict[str, Tensor] | None = None
        self.left = 0  # iterations phi still acts for

    def step(self, trainer: Any, detected: bool) -> dict[str, Any]:
        """After a meta-training iteration: adapt if a detection just fired, then act."""
        learner = trainer.learner
        start = detected and self.adapt_on_drift  # a detection opens the window
        again = self.readapt and self.phi is not None and self.left > 0  # inside the window
        if (start or again) and trainer.last_batch is not None:
            support = learner.prepare(trainer.last_batch)  # every task as one support set
            phi = learner.adapt(learner.params(), support)
            self.phi = {k: v.detach().clone() for k, v in phi.items()}
            if start:
                self.left = self.iterations
        acting = self.phi is not None and self.left > 0
        family, seed = trainer.family, int(trainer.config.seed)
        it = int(trainer.iteration)
        task_seed = derive_seed(seed, "acting", it, bits=31)
        tasks = family.sample(self.tasks, split="train", seed=task_seed)
        params = None
        if acting:
            params = {k: v.expand(len(tasks), *v.shape) for k, v in self.phi.items()}
            self.left -= 1
        with torch.no_grad():
            traj = collect_tasks(
                learner.policy,
                family,
                tasks,
                1,
                trainer.num_steps,
                derive_seed(seed, "acting-envs", it, bits=31),
                params=params,
                generator=torch.Generator().manual_seed(derive_seed(seed, "acting-actions", it)),
                vectorize=learner.vectorize,
            )
        returns = traj.episode_returns()
        return {
            "acting_return": float(np.mean(returns)) if returns else float("nan"),
            "acting_adapted": bool(acting),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"phi": None if self.phi is None else dict(self.phi), "left": self.left}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.phi = None if state["phi"] is None else {k: v.clone() for k, v in state["phi"].items()}
        self.left = int(state["left"])


def post_switch_returns(
    rows: Sequence[Mapping[str, Any]], switch_iterations: Sequence[int], window: int
) -> list[float]:
    """Mean ``acting_return`` over the ``window`` iterations after each switch (iterations
    ``b + 1 .. b + window`` for a switch after iteration ``b``), one value per switch."""
    by_iteration = {int(r["iteration"]): r["acting_return"] for r in rows if "acting_return" in r}
    out = []
    for b in switch_iterations:
        values = [by_iteration[i] for i in range(b + 1, b + window + 1) if i in by_iteration]
        out.append(float(np.mean(values)) if values else float("nan"))
    return out
