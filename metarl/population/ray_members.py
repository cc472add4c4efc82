"""Population members on Ray: each PBT member is a Ray actor that trains in parallel with the
others; exploit/explore stays on the driver (our :class:`~metarl.population.pbt.PBT`).

:class:`MemberWorker` (the actor body) owns one member's :class:`MultiAgentLearner`, its env and
its :class:`Emergence` window, and runs whole training iterations. :class:`RayMembers` holds the
actors and offers what :class:`~metarl.population.train.PopulationTrainer` and ``PBT`` use of a
member (``state_dict``, ``load_state_dict(learning_state=False)``, ``hparams``), so exploiting
copies parameters, optimiser moments and hyperparameters from one actor to another exactly as
between local members.

**Faults.** After every iteration a member returns its full state (parameters, optimiser, its
generator, the emergence window), which the driver keeps. If a member's actor dies, a fresh one
is started, given that state, and the iteration re-run with the same seed: the run continues as
if nothing had happened, and the lost attempt's episodes are never counted.
"""

from __future__ import annotations

from typing import Any

import torch

from metarl.backends import RayConfig, connect_ray, gather_retrying

from .config import PopulationConfig

__all__ = ["MemberWorker", "RayMembers"]


class MemberWorker:
    """One PBT member (the Ray actor's body; also usable in-process)."""

    def __init__(self, cfg: PopulationConfig, index: int, torch_threads: int = 1):
        from .learner import MultiAgentLearner
        from .train import Emergence, build_env

        torch.set_num_threads(int(torch_threads))
        self.cfg, self.index = cfg, index
        self.learner = MultiAgentLearner(cfg, build_env(cfg.env), seed=cfg.seed * 101 + index)
        self.emergence = Emergence(self.learner, cfg.analysis.window)
        self._batch = None

    def pid(self) -> int:
        import os

        return os.getpid()

    def train_iteration(self, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
        """One iteration; returns its log row and the member's state after it."""
        row, batch = self.learner.train_iteration(seed)
        self.emergence.add(batch)
        self._batch = batch
        return row, self.state()

    def metrics(self, diversity_envs: int) -> dict[str, Any]:
        """Emergence metrics over the window, diversity on the last batch's first envs."""
        batch = None
        if self._batch is not None:
            n = min(diversity_envs, self.cfg.env.num_envs)
            batch = self._batch.select(torch.arange(n))
        return self.emergence.metrics(batch)

    def state(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "emergence": self.emergence.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.emergence.load_state_dict(state["emergence"])

    def learner_state(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_learner_state(self, state: dict[str, Any], learning_state: bool) -> None:
        self.learner.load_state_dict(state, learning_state=learning_state)

    def get_hparams(self) -> dict[str, float]:
        return dict(self.learner.hparams)

    def set_hparams(self, hparams: dict[str, float]) -> None:
        self.learner.hparams = dict(hparams)

    def init_report(self) -> list:
        return self.learner.init_report

    def evaluate(self, episodes: int, seed: int) -> dict[str, Any]:
        from .train import evaluate_learner

        return evaluate_learner(self.learner, episodes, seed)

    def close(self) -> None:
        self.learner.env.close()


class _Member:
    """Driver-side handle of one member actor: what ``PBT`` and the trainer use of a member."""

    def __init__(self, group: RayMembers, index: int):
        self._group, self.index = group, index

    @property
    def _actor(self):
        return self._group.actors[self.index]

    def _get(self, ref):
        return self._group.ray.get(ref)

    def state_dict(self) -> dict[str, Any]:
        return self._get(self._actor.learner_state.remote())

    def load_state_dict(self, state: dict[str, Any], learning_state: bool = True) -> None:
        self._get(self._actor.load_learner_state.remote(state, learning_state))
        self._group.states[self.index] = self._get(self._actor.state.remote())

    @property
    def hparams(self) -> dict[str, float]:
        return self._get(self._actor.get_hparams.remote())

    @hparams.setter
    def hparams(self, value: dict[str, float]) -> None:
        self._get(self._actor.set_hparams.remote(dict(value)))
        self._group.states[self.index] = self._get(self._actor.state.remote())

    @property
    def init_report(self) -> list:
        return self._get(self._actor.init_report.remote())

    def evaluate(self, episodes: int, seed: int) -> dict[str, Any]:
        return self._get(self._actor.evaluate.remote(episodes, seed))


class RayMembers:
    """``cfg.pbt.members`` member actors on Ray (see the module docstring)."""

    def __init__(self, cfg: PopulationConfig, ray_cfg: RayConfig):
        ray, self.started_ray = connect_ray(ray_cfg)
        self.ray, self.cfg, self.ray_cfg = ray, cfg, ray_cfg
        self._actor_cls = ray.remote(MemberWorker)
        n = cfg.pbt.members
        self.actors = [self._spawn(m) for m in range(n)]
        self.states: list[dict[str, Any] | None] = [None] * n
        self.members = [_Member(self, m) for m in range(n)]
        self.failures = 0

    def _spawn(self, m: int):
        opts = dict(num_cpus=self.ray_cfg.cpus_per_worker, max_restarts=0)
        return self._actor_cls.options(**opts).remote(self.cfg, m, self.ray_cfg.torch_threads)

    def _replace(self, m: int) -> None:
        try:
            self.ray.kill(self.actors[m], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.actors[m] = self._spawn(m)
        if self.states[m] is not None:
            self.ray.get(self.actors[m].load_state.remote(self.states[m]))

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def train_iteration(self, seeds: list[int]) -> list[dict[str, float]]:
        """Every member's iteration in parallel (``seeds[m]`` for member ``m``); a member whose
        actor dies is restarted from its last state and re-runs the iteration."""
        out, self.failures = gather_retrying(
            self.ray,
            len(self.actors),
            lambda m: self.actors[m].train_iteration.remote(seeds[m]),
            self._replace,
            self.ray_cfg.max_failures,
            "member",
            self.failures,
        )
        rows = []
        for m, (row, state) in enumerate(out):
            rows.append(row)
            self.states[m] = state
        return rows

    def metrics(self, m: int, diversity_envs: int) -> dict[str, Any]:
        return self.ray.get(self.actors[m].metrics.remote(diversity_envs))

    def state_dicts(self) -> list[dict[str, Any]]:
        """Every member's full state (learner and emergence window): the copies the driver keeps
        current (after each iteration, exploit and hyperparameter change), fetched only before a
        member's first iteration."""
        if any(s is None for s in self.states):
            self.states = self.ray.get([a.state.remote() for a in self.actors])
        return list(self.states)

    def load_state_dicts(self, states: list[dict[str, Any]]) -> None:
        self.ray.get([a.load_state.remote(s) for a, s in zip(self.actors, states)])
        self.states = list(states)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.get(a.close.remote())
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False
