"""Emergence analysis: division of labour, behavioural diversity, skill usage.

**Roles.** An agent's role in an episode is the role it filled on most of its steps (for role
gathering: the resource type it covered; -1 if it filled none). Over episodes this gives a count
matrix ``C[i, k]`` (agent ``i`` took role ``k``) and ``p(k | i) ∝ C[i, k]``. Only the ``N'``
agents that took any role count, each weighted equally (``p(i) = 1/N'``, so an agent seen in more
episodes does not weigh more), and ``p(k) = mean_i p(k | i)``.

- **Specialisation index** (division of labour): the agent-role mutual information, normalised by
  its largest attainable value::

      SI = I(agent; role) / I_max(N', K),    I(agent; role) = H(p(k)) - mean_i H(p(k | i))

  1 when agents take distinct, consistent roles, spread as evenly over the ``K`` roles as ``N'``
  agents can be; 0 when the role does not depend on who the agent is, whether every agent always
  takes the same role or each spreads over the same mixture of roles. ``I`` is convex in
  ``p(k | i)``, so it is largest at a deterministic assignment, and the largest ``H(p(k))`` of
  one is that of the most even split of ``N'`` agents over ``K`` roles::

      I_max(N', K) = log N'                                      if N' <= K
                   = -sum_k (c_k / N') log(c_k / N'),  c_k ∈ {⌊N'/K⌋, ⌈N'/K⌉}, sum c_k = N'

  (``= log K`` when ``K`` divides ``N'``). On role gathering with ``N = K = 3``, ``I_max = log 3``,
  and two agents sharing one resource while the third takes another gives
  ``SI = 1 - (2/3) log 2 / log 3 = 0.579``.
- **Role consistency** ``1 - mean_i H(p(k | i)) / log K``: how firmly each agent keeps to one role,
  whichever it is (1 also when every agent always takes the *same* role, so it cannot show a
  division of labour on its own).

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
    "max_role_information",
    "role_consistency",
    "role_counts",
    "role_mutual_information",
    "skill_usage",
    "specialisation_index",
]


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis)


def _role_distributions(counts: np.ndarray) -> np.ndarray | None:
    """``p(k | i)`` of the agents that took any role, ``(N', K)``; None if there are none."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(1)
    took = totals > 0
    return counts[took] / totals[took, None] if took.any() else None


def role_mutual_information(counts: np.ndarray) -> float:
    """``I(agent; role) = H(mean_i p(·|i)) - mean_i H(p(·|i))`` in nats, agents weighted equally
    (NaN if no agent took a role)."""
    p = _role_distributions(counts)
    if p is None:
        return math.nan
    return float(max(_entropy(p.mean(0)) - _entropy(p).mean(), 0.0))


def max_role_information(n_agents: int, n_roles: int) -> float:
    """``I_max(N, K)``: the entropy of the most even assignment of ``N`` agents to ``K`` roles, the
    largest value ``I(agent; role)`` can take with agents weighted equally."""
    if n_agents < 1 or n_roles < 1:
        return 0.0
    base, extra = divmod(n_agents, n_roles)
    sizes = np.array([base + 1] * extra + [base] * (n_roles - extra), np.float64)
    return float(_entropy(sizes[sizes > 0] / n_agents))


def specialisation_index(counts: np.ndarray) -> float:
    """Division of labour ``I(agent; role) / I_max(N', K)`` in [0, 1] over the ``N'`` agents that
    took any role (NaN if undefined: no such agent, one agent, or one role)."""
    counts = np.asarray(counts)
    p = _role_distributions(counts)
    if p is None:
        return math.nan
    norm = max_role_information(p.shape[0], counts.shape[1])
    if norm <= 0:
        return math.nan
    return min(role_mutual_information(counts) / norm, 1.0)


def role_consistency(counts: np.ndarray) -> float:
    """``1 - mean_i H(role | agent i) / log K`` over agents with any role (NaN if none or K<2)."""
    counts = np.asarray(counts)
    p = _role_distributions(counts)
    if p is None or counts.shape[1] < 2:
        return math.nan
    return float(1.0 - _entropy(p).mean() / math.log(counts.shape[1]))


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
