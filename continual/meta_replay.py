"""Meta-replay: tasks of earlier stages rejoin the meta-batch (a trainer plugin for MAML/FOMAML).

A meta-learner forgets differently from a policy: what is lost is the initialisation's ability
to *adapt* to an old task distribution. So what is replayed is a task, not a chunk of behaviour:
a stored ``(support, query)`` pair from a meta-batch of an earlier stage. On every outer step
``K = tasks`` stored tasks are drawn and their MAML loss (adapt on the stored support from θ,
the outer loss on the stored query; :meth:`metarl.meta.MAML.task_losses`) is added to the outer
loss::

    L(θ) = L_meta(θ; current meta-batch) + c · mean_k w_k L_task(θ; support_k, query_k)

**Drawing.** The ``K`` draws are split over the stored stages as the chunk replay splits its
batches (:func:`continual.replay_storage.allocate_counts`): ``current_fraction`` from the stage
finished last, the rest over the older ones in proportion to their sizes. Within a stage, task
``i`` is drawn with probability ``p_i^α / Σ p^α`` where ``p_i`` is the magnitude of its last
outer loss plus a small ``ε`` (a new task gets the largest priority seen), and weighted by
``w_i = (N_s P(i))^-β / max w`` (Schaul et al. 2016). After the loss, the drawn tasks'
priorities become their new outer losses.

**What is stored.** At every stage end, the ``tasks_per_stage`` newest tasks of the stage's last
meta-batches (each task's support and query columns of the
:class:`metarl.meta.train.MetaBatch`), under the stage's id. The stored data was sampled by older
policies, so its inner and outer surrogates are off-policy estimates; that bias is the price of
not re-collecting old tasks (which a true continual learner cannot do).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarl.plugins import Plugin, StageEnd
from metarl.trajectory import Trajectory, concat_batch

from .replay_storage import allocate_counts

__all__ = ["MetaReplay"]

SCHEMA_VERSION = 1


class MetaReplay(Plugin):
    """Stored tasks of earlier stages in every meta-batch (see the module docstring).

    Args:
        learner: the MAML learner (:class:`metarl.meta.MAML`; FOMAML is MAML first-order).
        generator: the trainer's generator (draws come from it).
        tasks: stored tasks added to each outer step.
        tasks_per_stage: tasks kept from each stage.
        coef: weight of the replayed tasks' mean loss.
        current_fraction: share of the draws from the stage finished last (the rest: older
            stages, by size).
        alpha, beta: prioritisation exponent and importance-weight exponent.
        priority_eps: added to every priority.
    """

    name = "meta_replay"

    def __init__(
        self,
        learner: Any,
        generator: torch.Generator,
        tasks: int = 4,
        tasks_per_stage: int = 16,
        coef: float = 1.0,
        current_fraction: float = 0.5,
        alpha: float = 0.6,
        beta: float = 1.0,
        priority_eps: float = 1e-3,
    ):
        if not hasattr(learner, "task_losses"):
            raise ValueError(
                f"meta-replay needs a MAML learner (maml or fomaml), got {type(learner).__name__}"
            )
        if tasks < 1 or tasks_per_stage < 1 or coef < 0 or not 0 <= current_fraction <= 1:
            raise ValueError(
                "meta-replay needs tasks >= 1, tasks_per_stage >= 1, coef >= 0 and "
                "current_fraction in [0, 1]"
            )
        self.learner, self.generator = learner, generator
        self.tasks, self.tasks_per_stage, self.coef = tasks, tasks_per_stage, float(coef)
        self.current_fraction, self.alpha, self.beta = current_fraction, alpha, beta
        self.priority_eps = priority_eps
        self.items: list[dict[str, Any]] = []  # {"stage", "support", "query", "priority"}
        self.pending: deque[tuple[Trajectory, Trajectory]] = deque(maxlen=tasks_per_stage)
        self.max_priority = 1.0
        self.iteration = 0

    # -- storing --------------------------------------------------------------------------------
    def after_iteration(self, batch: Any, row: dict[str, Any]) -> None:
        """Keep the iteration's tasks (support and query columns) as candidates."""
        self.iteration += 1  # (MAML++'s multi-step loss weights follow the outer iteration)
        pre, post = getattr(batch, "pre", None), getattr(batch, "post", None)
        if pre is None or post is None:
            return
        n = int(pre.task_ids.max()) + 1 if pre.B else 0
        for i in range(n):
            cols = torch.nonzero(pre.task_ids == i).flatten().tolist()
            qcols = torch.nonzero(post.task_ids == i).flatten().tolist()
            self.pending.append((pre[cols], post[qcols]))

    def end_stage(self, end: StageEnd) -> None:
        for support, query in self.pending:
            self.items.append(
                {"stage": end.stage, "support": support, "query": query, "priority": None}
            )
        self.pending.clear()

    def stage_sizes(self) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for item in self.items:
            sizes[item["stage"]] = sizes.get(item["stage"], 0) + 1
        return sizes

    # -- drawing --------------------------------------------------------------------------------
    def draw(self, k: int) -> tuple[list[int], np.ndarray, dict[int, int]]:
        """``k`` item indices (stage-proportional, prioritized within a stage), their importance
        weights and the draws each stage got."""
        sizes = self.stage_sizes()
        stages = sorted(sizes)
        last = stages[-1]
        older = [s for s in stages if s != last]
        weights = np.array(
            [self.current_fraction if s == last else 0.0 for s in stages],
            dtype=np.float64,
        )
        if older:
            old_total = sum(sizes[s] for s in older)
            for j, s in enumerate(stages):
                if s != last:
                    weights[j] = (1 - self.current_fraction) * sizes[s] / old_total
        else:
            weights[:] = 1.0
        caps = np.array([sizes[s] for s in stages], dtype=np.int64)
        counts = allocate_counts(min(k, int(caps.sum())), weights, caps)
        chosen, w = [], []
        for s, c in zip(stages, counts):
            if c == 0:
                continue
            members = [i for i, item in enumerate(self.items) if item["stage"] == s]
            p = np.array(
                [self._priority(self.items[i]) ** self.alpha for i in members], dtype=np.float64
            )
            probs = torch.as_tensor(p / p.sum())
            picks = torch.multinomial(probs, int(c), replacement=False, generator=self.generator)
            for j in picks.tolist():
                chosen.append(members[j])
                w.append((len(members) * float(probs[j])) ** -self.beta)
        weights_out = np.asarray(w, dtype=np.float64)
        return chosen, weights_out / weights_out.max(), dict(zip(stages, counts.tolist()))

    def _priority(self, item: dict[str, Any]) -> float:
        p = self.max_priority if item["priority"] is None else item["priority"]
        return p + self.priority_eps

    # -- the loss -------------------------------------------------------------------------------
    def loss(self, params: Mapping[str, Tensor], stats: dict[str, float]) -> Tensor | None:
        if not self.items:
            return None
        chosen, weights, counts = self.draw(self.tasks)
        n = len(chosen)
        learner = self.learner
        supports = learner.prepare(concat_batch([self.items[i]["support"] for i in chosen]), n)
        query = learner.prepare(concat_batch([self.items[i]["query"] for i in chosen]), n)
        per_task, _ = learner.task_losses(dict(params), supports, query, iteration=self.iteration)
        w = torch.as_tensor(weights, dtype=per_task.dtype)
        values = per_task.detach().abs().tolist()
        for i, v in zip(chosen, values):
            self.items[i]["priority"] = v
        self.max_priority = max([self.max_priority, *values])
        stats["meta_replay_loss"] = float(per_task.detach().mean())
        stats["meta_replay_tasks"] = n
        return self.coef * (w * per_task).mean()

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "items": [
                {
                    "stage": it["stage"],
                    "support": it["support"].as_dict(),
                    "query": it["query"].as_dict(),
                    "priority": it["priority"],
                }
                for it in self.items
            ],
            "pending": [(s.as_dict(), q.as_dict()) for s, q in self.pending],
            "max_priority": self.max_priority,
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"meta-replay state schema_version {state.get('schema_version')} is not "
                f"supported (this code reads {SCHEMA_VERSION})"
            )
        self.items = [
            {
                "stage": int(it["stage"]),
                "support": Trajectory(**it["support"]),
                "query": Trajectory(**it["query"]),
                "priority": it["priority"],
            }
            for it in state["items"]
        ]
        self.pending.clear()
        self.pending.extend((Trajectory(**s), Trajectory(**q)) for s, q in state["pending"])
        self.max_priority = float(state["max_priority"])
        self.iteration = int(state["iteration"])
