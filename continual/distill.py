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

:class:`ReplayDistillation` is the trainer plugin around it (any trainer accepts it; for a
meta-learner the term is on the outer loss at θ): at every stage end it stores the stage's newest
sequences (relabelled by the policy the stage ended with) under the stage's id, and on every
update it adds ``coef · mean_b w_b (ℓ_π(b) + c_V ℓ_V(b))`` over a stage-proportional,
prioritized sample, then sets the sampled chunks' priorities to their losses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from metarl.objectives import policy_evaluate
from metarl.plugins import Plugin, StageEnd
from metarl.trajectory import Trajectory
from ssm.heads import head_kl

from .chunk_states import chunk_start_states
from .replay import ReplayBatch, ReplayBuffer

__all__ = ["ReplayDistillation", "distillation_losses", "head_kl", "skip_burn_in"]


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


class ReplayDistillation(Plugin):
    """Stage replay as a trainer plugin (see the module docstring).

    Args:
        buffer: the replay buffer (its stage-proportional, prioritized sampler).
        policy: the policy being trained (the loss runs it over the replayed chunks).
        generator: the trainer's generator (replay samples draw from it).
        batch_size: chunks per update.
        coef: weight of the replay loss.
        policy_loss: ``"kl"`` or ``"nll"``.
        value_coef: weight of the value-cloning term.
        steps_per_stage: transitions stored per stage (its newest whole sequences).
        relabel: store the distributions and values of the policy the stage ended with.
    """

    name = "replay"

    def __init__(
        self,
        buffer: ReplayBuffer,
        policy: torch.nn.Module,
        generator: torch.Generator,
        batch_size: int = 16,
        coef: float = 1.0,
        policy_loss: str = "kl",
        value_coef: float = 0.5,
        steps_per_stage: int = 8192,
        relabel: bool = True,
    ):
        if policy_loss not in ("kl", "nll"):
            raise ValueError(f"policy_loss must be 'kl' or 'nll', got {policy_loss!r}")
        if batch_size < 1 or coef < 0 or value_coef < 0 or steps_per_stage < 1:
            raise ValueError(
                "batch_size and steps_per_stage must be >= 1, coef and value_coef >= 0"
            )
        self.buffer, self.policy, self.generator = buffer, policy, generator
        self.batch_size, self.coef, self.policy_loss = batch_size, coef, policy_loss
        self.value_coef, self.steps_per_stage, self.relabel = value_coef, steps_per_stage, relabel

    def loss(self, params, stats: dict[str, float]) -> Tensor | None:
        if len(self.buffer) == 0:
            return None
        batch = self.buffer.sample(self.batch_size, self.generator)
        pi_loss, v_loss = distillation_losses(self.policy, batch, self.policy_loss)
        per_chunk = pi_loss + self.value_coef * v_loss  # (B,)
        replay_loss = (batch.weights * per_chunk).mean()
        self.buffer.update_priorities(batch.keys, per_chunk.detach().clamp(min=0.0))
        stats["replay_policy_loss"] = float(pi_loss.detach().mean())
        stats["replay_value_loss"] = float(v_loss.detach().mean())
        return self.coef * replay_loss

    def end_stage(self, end: StageEnd) -> None:
        for traj in self.selection(end.data, end.params):
            self.buffer.add_trajectory(traj, stage=end.stage, policy=end.policy, params=end.params)

    @torch.no_grad()
    def selection(self, data: list[Trajectory], params) -> list[Trajectory]:
        """The newest ``steps_per_stage`` transitions of ``data`` (whole sequences), relabelled
        with the policy at ``params`` (distributions and values) if ``relabel``."""
        budget, out = self.steps_per_stage, []
        for traj in reversed(data):
            fit = min(traj.B, budget // traj.T)
            if fit <= 0:
                break
            part = traj if fit == traj.B else traj[list(range(fit))]
            if self.relabel:
                ev = policy_evaluate(self.policy, dict(params), part)
                part = dataclasses.replace(
                    part, dist_params=ev.dist_params, values=ev.values, log_probs=ev.log_probs
                )
            out.append(part)
            budget -= fit * traj.T
        return out[::-1]

    def state_dict(self) -> dict:
        return self.buffer.state_dict()

    def load_state_dict(self, state) -> None:
        self.buffer.load_state_dict(state)
