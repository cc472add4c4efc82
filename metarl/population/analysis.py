"""Emergence analysis: role specialisation, behavioural diversity, skill usage.

**Roles.** An agent's role in an episode is the role it filled on most of its steps (for role
gathering: the resource type it covered; -1 if it filled none). Over episodes this gives a count
matrix ``C[i, k]`` (agent ``i`` took role ``k``) and ``p(k | i) ∝ C[i, k]``.

- Specialisation index ``SI = 1 - mean_i H(p(·|i)) / log K`` over the agents that took any role:
  1 when every agent always takes the same role, 0 when each spreads uniformly over all ``K``.
- Role mutual information ``I(agent; role) / log min(N, K)`` with agents weighted equally
  (``p(i) = 1/N'`` over the ``N'`` agents that took any role, ``p(k | i)`` as above), i.e.
  ``H(mean_i p(·|i)) - mean_i H(p(·|i))``: 1 when agents take distinct fixed roles, 0 when the
  role does not depend on who the agent is (which ``SI`` alone cannot tell: agents that all
  always take role 0 have SI = 1 but MI = 0).

**Diversity.** Mean pairwise Jensen-Shannon divergence, in units of ``log 2`` (so in [0, 1]),
between the agents' action distributions on shared states: every agent is run (its own network
and id, without messages) on the same observation sequences, the ones recorded by all slots.

**Skill usage.** For option agents, how often each chose each skill (at decision steps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "behavioural_diversity",
    "episode_roles",
    "js_divergence",
    "role_counts",
    "role_mutual_information",
    "skill_usage",
    "specialisation_index",
]


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis)


def specialisation_index(counts: np.ndarray) -> float:
    """``1 - mean_i H(role | agent i) / log K`` over agents with any role (NaN if none or K<2)."""
    counts = np.asarray(counts, dtype=np.float64)
    n_roles = counts.shape[1]
    totals = counts.sum(1)
    took = totals > 0
    if n_roles < 2 or not took.any():
        return math.nan
    p = counts[took] / totals[took, None]
    return float(1.0 - _entropy(p).mean() / math.log(n_roles))


def role_mutual_information(counts: np.ndarray) -> float:
    """``I(agent; role) / log min(N, K)`` with agents weighted equally (NaN if undefined)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(1)
    took = totals > 0
    norm = math.log(min(counts.shape))
    if not took.any() or norm <= 0:
        return math.nan
    p = counts[took] / totals[took, None]  # p(k | i)
    mi = _entropy(p.mean(0)) - _entropy(p).mean()
    return float(max(mi, 0.0) / norm)


def episode_roles(roles: np.ndarray | Tensor, n_roles: int) -> np.ndarray:
    """``roles (T, B, N)`` per step (-1: none) -> ``(B, N)`` the role each agent filled on most of
    its steps in the episode (-1 if none; ties go to the lower role)."""
    r = np.asarray(roles)
    onehot = (r[..., None] == np.arange(n_roles)).sum(0)  # (B, N, K) steps per role
    return np.where(onehot.sum(-1) > 0, onehot.argmax(-1), -1)


def role_counts(dominant: np.ndarray, n_roles: int) -> np.ndarray:
    """``dominant (B, N)`` episode roles -> ``(N, K)`` counts (episodes with no role skipped)."""
    d = np.asarray(dominant)
    return (d[..., None] == np.arange(n_roles)).sum(0).astype(np.int64)


def js_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats) between categorical distributions given as log-probs
    ``(..., A)``: ``½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q) / 2``."""
    logm = torch.logsumexp(torch.stack([logp, logq]), 0) - math.log(2)
    p, q = logp.exp(), logq.exp()
    return 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1)


@torch.no_grad()
def behavioural_diversity(learner, obs: Tensor, alive: Tensor) -> float:
    """Mean pairwise JS divergence / log 2 between the agents of ``learner`` on the shared states
    ``obs (T, B, N, D)`` (every slot's recorded sequences, where that slot was alive). Pairs whose
    action spaces differ (an option agent and a primitive one) are skipped; NaN if no pair is
    left."""
    T, B, N, D = obs.shape
    seqs = obs.permute(1, 2, 0, 3).reshape(B * N, T, D)  # every slot's episodes, (B·N, T, D)
    valid = alive.permute(1, 2, 0).reshape(B * N, T)
    if not valid.any():
        return math.nan
    dists = []
    for i in range(N):
        g = learner.group_of[i]
        net = learner.nets[g]
        x = seqs
        if learner.id_dim:
            ids = torch.zeros(B * N, T, N, dtype=x.dtype)
            ids[..., i] = 1.0
            x = torch.cat([x, ids], -1)
        dists.append(net.heads(net.core_seq(net.embed(x))).dist_params)  # (B·N, T, A)
    pairs = []
    for i in range(N):
        for j in range(i + 1, N):
            if dists[i].shape[-1] != dists[j].shape[-1]:
                continue
            pairs.append(js_divergence(dists[i], dists[j])[valid].mean() / math.log(2))
    return float(torch.stack(pairs).mean()) if pairs else math.nan


def skill_usage(actions: Tensor, decided: Tensor, n_skills: int) -> np.ndarray:
    """``(N, n_skills)`` counts of each slot's skill choices (``actions``/``decided`` ``(T, B,
    N)``: the held skill index and the decision mask)."""
    a = actions.masked_fill(~decided, -1).numpy()
    return (a[..., None] == np.arange(n_skills)).sum((0, 1)).astype(np.int64)
