"""The replay loss of an on-policy continual learner: policy distillation on stored chunks.

PPO cannot learn from old data by its own objective, so replayed chunks of earlier stages are
used as CLEAR does (Rolnick et al., 2019): behaviour cloning of the stored policy and value
cloning of the stored critic. For chunk ``b`` with training steps ``t`` (after the burn-in)::

    ℓ_π(b) = mean_t KL(π_stored(·|h_t) ‖ π_θ(·|h_t))        policy_loss="kl"
           = mean_t −log π_θ(a_t | h_t)                      policy_loss="nll"
    ℓ_V(b) = mean_t (V_θ(h_t) − V_stored(h_t))²

``π_stored`` are the distribution parameters stored with the chunk: with ``replay.relabel`` the
outputs of the policy that finished the chunk's stage (distillation of that policy), else those
of the policy that acted. The KL is in closed form for the heads of :mod:`ssm.heads`
(categorical, multi-discrete, diagonal Gaussian; tanh-Gaussian uses its pre-squash Gaussian,
since the KL is invariant under the bijective squash). The histories ``h_t`` are re-run from the
stored chunk-start state after a gradient-free burn-in (R2D2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from metarl.objectives import policy_evaluate
from metarl.trajectory import Trajectory
from ssm.heads import CategoricalHead, GaussianHead, MultiDiscreteHead

from .replay import ReplayBatch, chunk_start_states

__all__ = ["distillation_losses", "head_kl", "skip_burn_in"]


def head_kl(head: torch.nn.Module, target: Tensor, current: Tensor) -> Tensor:
    """``KL(target ‖ current)`` between two distributions of ``head``, given as distribution
    parameters ``(..., P)``; returns ``(...)``."""
    if isinstance(head, CategoricalHead):  # params are log-probabilities
        return (target.exp() * (target - current)).sum(-1)
    if isinstance(head, MultiDiscreteHead):
        return sum(
            head_kl(h, t, c)
            for h, t, c in zip(head.heads, head._split(target), head._split(current), strict=True)
        )
    if isinstance(head, GaussianHead):
        # KL(N(m1, s1²) ‖ N(m2, s2²)) = log(s2/s1) + (s1² + (m1 − m2)²) / (2 s2²) − ½, per dim
        m1, ls1 = head._split(target)
        m2, ls2 = head._split(current)
        var2 = (2 * ls2).exp()
        kl = ls2 - ls1 + ((2 * ls1).exp() + (m1 - m2) ** 2) / (2 * var2) - 0.5
        return kl.sum(-1)
    raise ValueError(f"no closed-form KL for the action head {type(head).__name__}")


def skip_burn_in(
    policy: torch.nn.Module, traj: Trajectory, burn_in: int, params=None
) -> Trajectory:
    """``traj`` without its first ``burn_in`` steps, starting from the state the policy reaches
    over them (computed without gradient)."""
    if burn_in <= 0:
        return traj
    if burn_in >= traj.T:
        raise ValueError(f"burn_in ({burn_in}) must be shorter than the chunk ({traj.T})")
    states = chunk_start_states(policy, traj, np.array([0, burn_in]), params)
    state = pytree.tree_map(lambda s: s[:, 1], states)
    tail = {}
    for f in dataclasses.fields(Trajectory):
        value = getattr(traj, f.name)
        tail[f.name] = value[burn_in:] if f.metadata["layout"] == "tb" else value
    tail["initial_state"] = state
    tail["start_returns"] = torch.zeros_like(traj.start_returns)
    return Trajectory(**tail)


def distillation_losses(
    policy: torch.nn.Module,
    batch: ReplayBatch,
    policy_loss: str = "kl",
    params: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-chunk ``(ℓ_π, ℓ_V)``, each ``(B,)`` (see the module docstring), differentiable in the
    policy's parameters (or in ``params`` under ``torch.func``)."""
    if policy_loss not in ("kl", "nll"):
        raise ValueError(f"policy_loss must be 'kl' or 'nll', got {policy_loss!r}")
    traj = skip_burn_in(policy, batch.to_trajectory(), batch.burn_in, params)
    ev = policy_evaluate(policy, params, traj)
    if policy_loss == "kl":
        target = traj.dist_params.to(ev.dist_params.dtype)
        per_step = head_kl(policy.head, target, ev.dist_params)  # (T, B)
    else:
        per_step = -ev.log_probs
    value = (ev.values - traj.values.to(ev.values.dtype)) ** 2  # (T, B)
    return per_step.mean(0), value.mean(0)
