"""RL objectives: GAE, VPG and PPO losses, and re-evaluating a policy over a trajectory.

Every function is pure (tensors in, tensors out, no in-place writes to its inputs), so meta-learners
can differentiate through them with ``torch.func.grad`` (and ``vmap`` them over tasks). Inputs are
``(T, B)`` unless stated; the PPO and VPG losses accept any matching shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call

from ssm.policy import SequencePolicy

from .trajectory import Trajectory


def gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
    last_value: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) with correct time-limit handling.

    With ``done_t = term_t or trunc_t``::

        V_next,t = bootstrap_values_t        if trunc_t
                 = values_{t+1}              else, for t < T-1
                 = last_value                else, for t = T-1
        δ_t = r_t + γ (1 - term_t) V_next,t - V_t
        A_t = δ_t + γ λ (1 - done_t) A_{t+1},     A_T = 0
        R_t = A_t + V_t                           (the value target)

    A termination contributes no future value; a truncation bootstraps from the value of the
    episode's final observation; either one stops the recursion, since ``t+1`` then belongs to
    the next episode.

    Returns ``(advantages, returns)``, both ``(T, B)``.
    """
    term = terminated.to(values.dtype)
    done = (terminated | truncated).to(values.dtype)
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)], dim=0)
    next_values = torch.where(truncated, bootstrap_values.to(values.dtype), next_values)
    deltas = rewards + gamma * (1.0 - term) * next_values - values
    advantage = torch.zeros_like(last_value)
    advantages = []
    for t in reversed(range(rewards.shape[0])):
        advantage = deltas[t] + gamma * lam * (1.0 - done[t]) * advantage
        advantages.append(advantage)
    advantages_t = torch.stack(advantages[::-1])
    return advantages_t, advantages_t + values


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """``(A - mean(A)) / (std(A) + eps)`` over all elements."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def explained_variance(values: Tensor, returns: Tensor) -> Tensor:
    """``1 - Var(R - V) / Var(R)``: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = returns.var()
    return 1.0 - (returns - values).var() / var_returns


def vpg_loss(log_probs: Tensor, advantages: Tensor) -> Tensor:
    """Vanilla policy gradient (REINFORCE with a baseline): ``L = -mean(log π(a|s) Â)``.

    ``∇L = -E[∇log π(a|s) Â]``; the advantages are constants (detached).
    """
    return -(log_probs * advantages.detach()).mean()


def ppo_loss(
    new_log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    clip_coef: float = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    clip_vloss: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The PPO-clip loss (Schulman et al., 2017), as in CleanRL.

    With the probability ratio ``ρ = exp(log π - log π_old)``::

        L_π  = mean(max(-Â ρ, -Â clip(ρ, 1-ε, 1+ε)))
        L_V  = ½ mean(max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²))   (clip_vloss)
             = ½ mean((V - R)²)                                               (otherwise)
        L    = L_π - c_ent mean(H) + c_V L_V

    ``advantages``, ``old_*`` and ``returns`` are data (detached). Returns ``(loss, stats)`` with
    the detached diagnostics ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``
    (``mean((ρ - 1) - log ρ)``, the low-variance estimator of KL(π_old‖π)) and ``clip_fraction``
    (share of samples with ``|ρ - 1| > ε``).
    """
    advantages, returns = advantages.detach(), returns.detach()
    old_log_probs, old_values = old_log_probs.detach(), old_values.detach()
    log_ratio = new_log_probs - old_log_probs
    ratio = log_ratio.exp()
    policy_loss = torch.max(
        -advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    ).mean()

    value_loss_unclipped = (new_values - returns) ** 2
    if clip_vloss:
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
        value_loss = 0.5 * torch.max(value_loss_unclipped, (v_clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * value_loss_unclipped.mean()

    entropy_mean = entropy.mean()
    loss = policy_loss - ent_coef * entropy_mean + vf_coef * value_loss
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy_mean.detach(),
            "approx_kl": ((ratio - 1) - log_ratio).mean().detach(),
            "clip_fraction": ((ratio - 1).abs() > clip_coef).to(ratio.dtype).mean().detach(),
        }
    return loss, stats


class Evaluation(NamedTuple):
    """A policy's outputs over a trajectory, all ``(T, B)`` (``dist_params``: ``(T, B, P)``)."""

    log_probs: Tensor
    values: Tensor
    entropy: Tensor
    dist_params: Tensor


def policy_evaluate(
    policy: SequencePolicy, params: dict[str, Tensor] | None, traj: Trajectory
) -> Evaluation:
    """Re-run ``policy`` in sequence mode over ``traj``: from ``traj.initial_state``, zeroing the
    state where ``traj.resets``, and feeding the recorded in-context inputs. With a ``params``
    dict it runs ``functional_call(policy, params, ...)``, so the result is differentiable in
    ``params`` under ``torch.func``; with ``None`` it uses the module's own parameters.

    On the trajectory the policy collected (same parameters), this reproduces the recorded
    ``values``, ``log_probs`` and ``dist_params`` to float precision.
    """
    obs = traj.obs.transpose(0, 1)  # (B, T, *obs_shape)
    kwargs: dict = {"state": traj.initial_state, "resets": traj.resets.transpose(0, 1)}
    if getattr(policy, "in_context", False):
        kwargs.update(
            prev_action=traj.prev_actions.transpose(0, 1),
            prev_reward=traj.prev_rewards.transpose(0, 1),
            prev_done=traj.prev_dones.transpose(0, 1),
        )
    if params is None:
        out, _ = policy(obs, **kwargs)
    else:
        out, _ = functional_call(policy, params, (obs,), kwargs)
    actions = traj.actions.transpose(0, 1)
    log_probs = policy.log_prob(out, actions)  # the heads use no parameters of their own here
    entropy = policy.entropy(out)
    return Evaluation(
        log_probs=log_probs.transpose(0, 1),
        values=out.value.transpose(0, 1),
        entropy=entropy.transpose(0, 1),
        dist_params=out.dist_params.transpose(0, 1),
    )
