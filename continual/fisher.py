"""The diagonal Fisher information of a sequence policy, estimated from stored trajectories.

For a recurrent policy the steps of a trajectory are conditionally independent given their
histories ``h_t`` (observations, resets and in-context inputs up to step ``t``), so the Fisher of
the per-step action distributions is estimated as the average over all ``T·B`` recorded steps::

    empirical:  F_i = 1/(TB) Σ_{t,b} (∂/∂θ_i log π_θ(a_tb | h_tb))²          a_tb: the taken action
    true:       F_i = 1/(TB) Σ_{t,b} 1/S Σ_s (∂/∂θ_i log π_θ(ã_tbs | h_tb))²  ã_tbs ~ π_θ(· | h_tb)

The *empirical* Fisher uses the actions in the trajectory (it equals the true Fisher only when
those were drawn from the current policy); the *true* Fisher draws ``S`` fresh actions per step
from the current policy (a Monte-Carlo estimate of the expectation over actions). Either way the
histories are the recorded ones: a resampled action enters only its own step's log-probability,
never later in-context inputs. Per-step gradients are the rows of the Jacobian of the ``(T, B)``
log-probabilities (each depends on its own sequence only, so its row is that step's gradient):
one forward pass, then ``vmap`` over ``vjp`` with one-hot cotangents, ``chunk_size`` rows at a
time, so memory stays at ``chunk_size`` × the parameter count.

Parameters that do not affect ``log π`` (the critic) get a Fisher of exactly 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor
from torch.func import vjp, vmap

from metarl.objectives import policy_evaluate
from metarl.trajectory import Trajectory
from ssm.policy import PolicyOutput

__all__ = ["FISHER_KINDS", "fisher_diagonal"]

FISHER_KINDS = ("empirical", "true")


def fisher_diagonal(
    policy: torch.nn.Module,
    trajectories: Trajectory | Iterable[Trajectory],
    params: Mapping[str, Tensor] | None = None,
    kind: Literal["empirical", "true"] = "empirical",
    samples: int = 1,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 256,
) -> dict[str, Tensor]:
    """The diagonal Fisher ``{name: F (same shape as the parameter)}`` of ``policy`` at
    ``params`` (default: its own trainable parameters), averaged over every step of
    ``trajectories`` (see the module docstring for ``kind``).

    Args:
        samples: actions drawn per step for ``kind="true"``.
        generator: the random source of those draws.
        chunk_size: per-step gradients computed at once (None: all ``T·B`` at once).
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    trajs = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    if not trajs or not all(isinstance(t, Trajectory) for t in trajs):
        raise ValueError("trajectories must be a Trajectory or a non-empty list of them")
    if params is None:
        params = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
    params = {n: p.detach() for n, p in params.items()}
    if not params:
        raise ValueError("no parameters to compute a Fisher for")

    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    steps = 0
    for traj in trajs:
        if kind == "true":  # S copies of every sequence, each with its own sampled actions
            idx = torch.arange(traj.B).repeat(samples)
            traj = traj[idx]
            traj = dataclasses.replace(
                traj, actions=_sample_actions(policy, params, traj, generator)
            )

        def log_probs(p: dict[str, Tensor], traj: Trajectory = traj) -> Tensor:
            return policy_evaluate(policy, p, traj).log_probs.reshape(-1)  # (T·B,)

        out, vjp_fn = vjp(log_probs, params)
        n_rows = out.numel()
        step = n_rows if chunk_size is None else chunk_size
        for start in range(0, n_rows, step):
            rows = torch.arange(start, min(start + step, n_rows))
            basis = torch.zeros(len(rows), n_rows, dtype=out.dtype)
            basis[torch.arange(len(rows)), rows] = 1.0
            (grads,) = vmap(vjp_fn)(basis)  # name -> (rows, *shape): per-step gradients
            for n, g in grads.items():
                fisher[n] += g.detach().pow(2).sum(dim=0)
        steps += n_rows
    return {n: f / steps for n, f in fisher.items()}


@torch.no_grad()
def _sample_actions(
    policy: torch.nn.Module,
    params: Mapping[str, Tensor],
    traj: Trajectory,
    generator: torch.Generator | None,
) -> Tensor:
    """Actions ``(T, B, ...)`` drawn from the policy at ``params`` along the recorded histories
    of ``traj``."""
    ev = policy_evaluate(policy, dict(params), traj)
    out = PolicyOutput(ev.dist_params.transpose(0, 1), ev.values.transpose(0, 1))  # (B, T, ...)
    return policy.sample(out, generator).transpose(0, 1).to(traj.actions.dtype)
