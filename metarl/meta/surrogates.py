"""Inner and outer objectives of gradient meta-RL, as functions of ``(params, TaskBatch)``.

The estimator that makes second-order MAML-RL correct
----------------------------------------------------
MAML-RL (Finn et al., 2017) adapts ``φ = θ - α ∇L_in(θ)`` where ``L_in(θ) = -E_{τ~π_θ}[R(τ)]``,
so the meta-gradient needs the Jacobian ``dφ/dθ = I - α ∇²L_in(θ)``. The trajectories were
*sampled* from ``π_θ``, and the true Hessian has a score-function part::

    ∇² E_{a~π_θ}[A(a)] = E[ A (∇² log π_θ(a) + ∇log π_θ(a) ∇log π_θ(a)ᵀ) ]

Differentiating the usual surrogate ``-mean(log π_θ(a) Â)`` twice gives only the first term, so
its meta-gradient is biased. ProMP (Rothfuss et al., 2019) fixes this with the low-variance
curvature (LVC) surrogate, a DiCE-style "magic box" ``□(x) = exp(x - ⊥x)`` per step::

    L_in(φ) = -mean_t,b[ exp(log π_φ(a_t|h_t) - log π_b(a_t|h_t)) Â_t ]            (``lvc``)

with ``log π_b`` the *behaviour* log-probabilities recorded while sampling (a constant). At
``φ = θ`` (the sampler) its value is ``-mean(Â)``, its gradient the policy gradient, and its
Hessian exactly the two terms above, so ``E[∇²L_in]`` is the Hessian of the expected return: the
meta-gradient is unbiased for one-step episodes (bandits) and, for longer episodes, drops only the
cross-time terms ``∇log π_t ∇log π_t'ᵀ`` (t ≠ t'), which is LVC's bias/variance trade-off (full
DiCE keeps them at a much higher variance). Because the denominator is the recorded behaviour
log-prob rather than ``⊥log π_φ``, the same surrogate is an importance-weighted objective at any
later inner step ``φ_k ≠ θ`` on the same data, and it is a smooth function of the parameters (so
finite differences can check it).

``ppo`` is the clipped version of the same ratio (Schulman et al., 2017); ``vpg`` is the plain
``-mean(log π_φ Â)``, kept to show (and test) the bias described above.

Outer objectives are the importance-weighted (``vpg``) or clipped (``ppo``) surrogate on the
query trajectories, sampled with the adapted parameters; their gradient at those parameters is
the policy gradient of the adapted policy.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from metarl.objectives import policy_evaluate
from ssm.heads import head_kl
from ssm.policy import SequencePolicy

from .batch import TaskBatch

Params = dict[str, Tensor]
InnerObjective = Literal["lvc", "ppo", "vpg"]
OuterObjective = Literal["vpg", "ppo"]
INNER_OBJECTIVES = ("lvc", "ppo", "vpg")
OUTER_OBJECTIVES = ("vpg", "ppo")


def _ratio(log_probs: Tensor, behaviour: Tensor) -> Tensor:
    return torch.exp(log_probs - behaviour.detach())


def inner_loss(
    policy: SequencePolicy,
    params: Params | None,
    batch: TaskBatch,
    objective: InnerObjective = "lvc",
    clip_coef: float = 0.2,
) -> Tensor:
    """The inner (adaptation) loss of one task; see the module docstring for the estimators."""
    ev = policy_evaluate(policy, params, batch.traj)
    adv = batch.advantages.detach()
    if objective == "vpg":
        return -(ev.log_probs * adv).mean()
    ratio = _ratio(ev.log_probs, batch.traj.log_probs)
    if objective == "lvc":
        return -(ratio * adv).mean()
    if objective == "ppo":
        clipped = torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        return torch.max(-adv * ratio, -adv * clipped).mean()
    raise ValueError(f"inner objective must be one of {INNER_OBJECTIVES}, got {objective!r}")


def outer_loss(
    policy: SequencePolicy,
    params: Params | None,
    batch: TaskBatch,
    objective: OuterObjective = "vpg",
    clip_coef: float = 0.2,
    ent_coef: float = 0.0,
) -> Tensor:
    """The query loss of one task at adapted ``params``: ``-mean(ρ Â)`` (``vpg``) or PPO-clip,
    minus ``ent_coef`` times the mean entropy."""
    ev = policy_evaluate(policy, params, batch.traj)
    adv = batch.advantages.detach()
    ratio = _ratio(ev.log_probs, batch.traj.log_probs)
    if objective == "vpg":
        loss = -(ratio * adv).mean()
    elif objective == "ppo":
        clipped = torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        loss = torch.max(-adv * ratio, -adv * clipped).mean()
    else:
        raise ValueError(f"outer objective must be one of {OUTER_OBJECTIVES}, got {objective!r}")
    if ent_coef:
        loss = loss - ent_coef * ev.entropy.mean()
    return loss


def value_loss(policy: SequencePolicy, params: Params, batch: TaskBatch) -> Tensor:
    """``½ mean((V_θ - R)²)``: regression of the critic on the batch's returns."""
    ev = policy_evaluate(policy, params, batch.traj)
    return 0.5 * ((ev.values - batch.returns.detach()) ** 2).mean()


def query_kl(policy: SequencePolicy, params: Params, batch: TaskBatch) -> Tensor:
    """Mean ``KL(π_behaviour ‖ π_params)`` over the states of ``batch`` (the behaviour
    distribution is the recorded ``dist_params``)."""
    ev = policy_evaluate(policy, params, batch.traj)
    return head_kl(policy.head, batch.traj.dist_params.detach(), ev.dist_params).mean()
