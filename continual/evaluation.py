"""Scoring every task of a sequence: one deterministic episode batch, the same seeds every time.

Each task entry gets ``episodes`` sub-envs (spread over its task specs) in one vector env, the
policy plays the first episode of each (greedily by default), and an entry's score is the mean of
:meth:`curricula.TaskEntry.score` over its episodes (success, or the return mapped to ``[0, 1]``).
A stage's score is the mean over its entries. The env seeds are the same at every evaluation, so
a change in score is a change of the policy, not of the draw: a policy that did not change scores
exactly the same (PackNet's frozen tasks do). The seed of an (entry, episode) does not depend on
which other entries are evaluated alongside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from curricula import BuiltCurriculum
from metarl.rollout import Rollout

__all__ = ["SequenceEvaluator", "first_episode_stats"]


def first_episode_stats(traj) -> tuple[np.ndarray, np.ndarray]:
    """``(returns, successes)``, each ``(B,)``: the return of each sub-env's first episode in
    ``traj`` and whether it succeeded at any of its steps. Every sub-env must end an episode."""
    dones = traj.dones.numpy()  # (T, B)
    if not dones.any(axis=0).all():
        raise ValueError("every sub-env must finish an episode within the collected steps")
    first = dones.argmax(axis=0)  # (B,) step of the first episode end
    inside = np.arange(dones.shape[0])[:, None] <= first[None, :]  # (T, B)
    rewards = traj.rewards.double().numpy()
    success = traj.success.double().numpy()
    return (rewards * inside).sum(0), np.where(inside, success, 0.0).max(0)


class SequenceEvaluator:
    """Scores task entries of ``built`` (see the module docstring).

    Args:
        built: the curriculum's families and specs.
        episodes: episodes per entry.
        seed: env seed of every evaluation.
        deterministic: act with the distribution's mode.
        in_context: the policy is in-context (RL²): it plays ``episodes_per_trial`` episodes
            per trial and is scored on the last one.
        episodes_per_trial: see ``in_context``.
        asynchronous: step the envs in subprocesses.
    """

    def __init__(
        self,
        built: BuiltCurriculum,
        episodes: int,
        seed: int,
        deterministic: bool = True,
        in_context: bool = False,
        episodes_per_trial: int = 1,
        asynchronous: bool = False,
    ):
        self.built, self.episodes, self.seed = built, int(episodes), int(seed)
        self.deterministic, self.in_context = deterministic, in_context
        self.episodes_per_trial = episodes_per_trial if in_context else 1
        self.asynchronous = asynchronous
        self._envs: dict[tuple[str, ...], tuple] = {}

    def _vector_env(self, names: tuple[str, ...]):
        if names not in self._envs:
            assignments, seeds = [], []
            for name in names:
                specs = self.built.tasks[name]
                assignments += [(name, specs[k % len(specs)]) for k in range(self.episodes)]
                row = self.built.curriculum.task_index(name)
                seeds += [self.seed + 1000 * row + k for k in range(self.episodes)]
            envs = self.built.vector_env(
                assignments, seed=self.seed, asynchronous=self.asynchronous
            )
            self._envs[names] = (envs, assignments, seeds)
        return self._envs[names]

    @torch.no_grad()
    def evaluate(self, policy: torch.nn.Module, names: Sequence[str]) -> dict[str, dict]:
        """``{entry: {"return", "success", "score"}}`` (means over its episodes)."""
        names = tuple(dict.fromkeys(names))
        envs, assignments, seeds = self._vector_env(names)
        rollout = Rollout(
            policy,
            envs,
            reset_state="trial" if self.in_context else "episode",
            episodes_per_trial=self.episodes_per_trial if self.in_context else None,
            generator=torch.Generator().manual_seed(self.seed),
            task_ids=self.built.task_ids(assignments),
        )
        # each (entry, episode) has its own env seed, whatever else is evaluated alongside, so
        # an entry scores the same here, in a reference run and under PackNet's per-stage masks
        rollout.new_trial(seed=seeds)
        horizon = self.built.max_episode_steps
        traj = rollout.collect(horizon * self.episodes_per_trial, deterministic=self.deterministic)
        if self.in_context and self.episodes_per_trial > 1:  # score the trial's last episode
            traj = _last_episode_view(traj, self.episodes_per_trial)
        returns, successes = first_episode_stats(traj)
        out = {}
        for name in names:
            rows = [i for i, (n, _) in enumerate(assignments) if n == name]
            entry = self.built.curriculum.task(name)
            scores = [entry.score(returns[i], successes[i]) for i in rows]
            out[name] = {
                "return": float(np.mean(returns[rows])),
                "success": float(np.mean(successes[rows])),
                "score": float(np.mean(scores)),
            }
        return out

    def close(self) -> None:
        for envs, _, _ in self._envs.values():
            envs.close()
        self._envs.clear()


def _last_episode_view(traj, episodes: int):
    """``traj`` from just after each sub-env's ``episodes − 1``-th episode end, so that
    :func:`first_episode_stats` scores the trial's last episode. Sub-envs end episodes at
    different steps, so rewards before that point are zeroed and dones masked instead of
    slicing."""
    import dataclasses

    dones = traj.dones.numpy()
    counts = np.cumsum(dones, axis=0)  # episodes ended up to and including t
    before = counts - dones < episodes - 1  # (T, B) step belongs to an earlier episode
    keep = torch.from_numpy(~before)
    return dataclasses.replace(
        traj,
        rewards=torch.where(keep, traj.rewards, torch.zeros_like(traj.rewards)),
        success=torch.where(keep, traj.success, torch.zeros_like(traj.success)),
        terminated=traj.terminated & keep,
        truncated=traj.truncated & keep,
    )


def adapted_scores(
    built: BuiltCurriculum,
    learner,
    names: Sequence[str],
    steps: int,
    episodes: int,
    seed: int,
    num_steps: int | None = None,
) -> tuple[float, float]:
    """A meta-learner's score on the task entries ``names`` before and after ``steps`` inner steps
    from θ: :func:`metarl.meta.adapt_eval` on every task spec of the entries (``episodes``
    sampled episodes per spec and step, one seed), each episode scored by its entry's metric,
    then averaged over the specs of an entry and over the entries. Returns ``(pre, adapted)``."""
    from metarl.meta import adapt_eval

    from .stage_tasks import StageFamily

    family = StageFamily(built, names)
    tasks = [spec for name in dict.fromkeys(names) for spec in built.tasks[name]]
    curves = adapt_eval(learner.policy, family, learner, tasks, steps, episodes, [seed], num_steps)
    returns, success = curves["returns"][0], curves["success"][0]  # (tasks, steps + 1)
    per_entry: dict[str, list[tuple[float, float]]] = {}
    for t, task in enumerate(tasks):
        entry = built.curriculum.task(family.entry_of(task))
        per_entry.setdefault(entry.name, []).append(
            (entry.score(returns[t, 0], success[t, 0]), entry.score(returns[t, -1], success[t, -1]))
        )
    pre = float(np.mean([np.mean([p for p, _ in v]) for v in per_entry.values()]))
    adapted = float(np.mean([np.mean([a for _, a in v]) for v in per_entry.values()]))
    return pre, adapted
