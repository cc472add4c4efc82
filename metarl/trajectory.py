"""``Trajectory``: a batch of rollout sequences in ``(T, B, ...)`` layout.

Policies are recurrent, so a trajectory keeps whole sequences together: it is sliced over the batch
axis (``traj[idx]``) for minibatches, never over time, and it carries the policy state before step 0
(``initial_state``) and the reset mask, so that :func:`metarl.objectives.policy_evaluate` can
re-run the policy over it in sequence mode and reproduce the values recorded while acting.

Time-step conventions (step ``t`` acts on ``obs[t]`` and receives ``rewards[t]``):

- ``resets[t]``: the policy state was zeroed *before* step ``t`` (episode or trial start);
- ``prev_actions[t], prev_rewards[t], prev_dones[t]``: the in-context inputs fed at step ``t``
  (the previous step's action, reward and done; zeros at a trial start);
- ``bootstrap_values[t]``: at a truncated step, ``V(final_obs)`` under the pre-reset state; else 0;
- ``last_value``: ``V(obs[T])`` with the state after step ``T-1`` (bootstraps the unfinished tail).

The class is registered as a pytree, so ``torch.func`` transforms (``grad``, ``vmap``) and
``torch.utils._pytree.tree_map`` accept it directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

# How each field is laid out: "tb" = (T, B, ...), "b" = (B, ...), "state" = pytree of (B, ...).
_TB, _B, _STATE = "tb", "b", "state"


def _layout(kind: str) -> Any:
    return field(metadata={"layout": kind})


@dataclass
class Trajectory:
    """Rollout data of ``B`` sequences of ``T`` steps (see the module docstring for conventions)."""

    obs: Tensor = _layout(_TB)
    """(T, B, *obs_shape) observations the policy acted on."""
    actions: Tensor = _layout(_TB)
    """(T, B, *action_shape) sampled actions (unclipped, so ``log_probs`` match them)."""
    rewards: Tensor = _layout(_TB)
    """(T, B) rewards."""
    terminated: Tensor = _layout(_TB)
    """(T, B) bool: the episode reached a terminal state at step t."""
    truncated: Tensor = _layout(_TB)
    """(T, B) bool: the episode was cut off (time limit) at step t."""
    log_probs: Tensor = _layout(_TB)
    """(T, B) log π(a_t | ·) under the acting policy."""
    values: Tensor = _layout(_TB)
    """(T, B) V(obs_t) under the acting policy."""
    dist_params: Tensor = _layout(_TB)
    """(T, B, P) action-distribution parameters of the acting policy."""
    success: Tensor = _layout(_TB)
    """(T, B) float: ``info["success"]`` where the env reports it, 0 elsewhere."""
    resets: Tensor = _layout(_TB)
    """(T, B) bool: the policy state was zeroed before step t."""
    prev_actions: Tensor = _layout(_TB)
    """(T, B, *action_shape) in-context input: the previous action (0 at a trial start)."""
    prev_rewards: Tensor = _layout(_TB)
    """(T, B) in-context input: the previous reward (0 at a trial start)."""
    prev_dones: Tensor = _layout(_TB)
    """(T, B) bool in-context input: the previous step ended an episode (False at a trial
    start)."""
    trial_ends: Tensor = _layout(_TB)
    """(T, B) bool: a trial ended at step t (equals ``terminated | truncated`` per episode)."""
    bootstrap_values: Tensor = _layout(_TB)
    """(T, B) V(final_obs) under the pre-reset state at truncated steps, 0 elsewhere."""
    last_value: Tensor = _layout(_B)
    """(B,) V(obs_T) of the observation after the final step, with the carried state."""
    start_returns: Tensor = _layout(_B)
    """(B,) return accumulated, before step 0, by the episode in progress at step 0."""
    task_ids: Tensor = _layout(_B)
    """(B,) int task index of each sequence."""
    initial_state: Any = _layout(_STATE)
    """The policy state before step 0: a pytree of (B, ...) tensors."""

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def B(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def dones(self) -> Tensor:
        """(T, B) bool: an episode ended at step t (terminated or truncated)."""
        return self.terminated | self.truncated

    # -- conversions ----------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def _map(self, fn_tb, fn_b) -> Trajectory:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.metadata["layout"]
            if kind == _TB:
                out[f.name] = fn_tb(value)
            elif kind == _B:
                out[f.name] = fn_b(value)
            else:
                out[f.name] = pytree.tree_map(fn_b, value)
        return Trajectory(**out)

    def to(self, device: torch.device | str) -> Trajectory:
        def move(x: Tensor) -> Tensor:
            return x.to(device)

        return self._map(move, move)

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> Trajectory:
        """Select whole sequences: ``traj[idx]`` indexes the batch axis of every field."""
        if isinstance(index, int):
            index = [index]  # keep the batch axis
        return self._map(lambda x: x[:, index], lambda x: x[index])

    def flatten_time(self) -> dict[str, Tensor]:
        """The ``(T, B, ...)`` fields reshaped to ``(T * B, ...)`` (for non-recurrent losses)."""
        return {
            f.name: getattr(self, f.name).reshape(self.T * self.B, *getattr(self, f.name).shape[2:])
            for f in dataclasses.fields(self)
            if f.metadata["layout"] == _TB
        }

    # -- statistics -----------------------------------------------------------------------------
    def episode_returns(self) -> list[float]:
        """Undiscounted returns of the episodes that ended within this trajectory, in order of
        their end step (an episode begun in an earlier ``collect`` counts its earlier rewards via
        ``start_returns``)."""
        running = self.start_returns.double().clone()
        dones = self.dones
        out: list[float] = []
        for t in range(self.T):
            running = running + self.rewards[t].double()
            out.extend(running[dones[t]].tolist())
            running = torch.where(dones[t], torch.zeros_like(running), running)
        return out

    def episode_successes(self) -> list[float]:
        """``success`` at the final step of each episode that ended within this trajectory."""
        dones = self.dones
        return [s for t in range(self.T) for s in self.success[t][dones[t]].tolist()]


def concat_batch(trajs: Sequence[Trajectory]) -> Trajectory:
    """Join trajectories of equal length along the batch axis (sequence slices collected apart,
    e.g. by the Ray backend's workers, in order)."""
    if not trajs:
        raise ValueError("concat_batch needs at least one trajectory")
    if len({t.T for t in trajs}) != 1:
        raise ValueError(f"trajectories differ in length: {[t.T for t in trajs]}")
    out = {}
    for f in dataclasses.fields(Trajectory):
        values = [getattr(t, f.name) for t in trajs]
        dim = 1 if f.metadata["layout"] == _TB else 0
        out[f.name] = pytree.tree_map(lambda *xs, d=dim: torch.cat(xs, d), *values)
    return Trajectory(**out)


def _flatten(traj: Trajectory) -> tuple[list[Any], list[str]]:
    names = [f.name for f in dataclasses.fields(traj)]
    return [getattr(traj, n) for n in names], names


def _unflatten(values: list[Any], names: list[str]) -> Trajectory:
    return Trajectory(**dict(zip(names, values)))


def _flatten_with_keys(traj: Trajectory):
    values, names = _flatten(traj)
    return [(pytree.GetAttrKey(n), v) for n, v in zip(names, values)], names


pytree.register_pytree_node(
    Trajectory,
    _flatten,
    _unflatten,
    serialized_type_name="metarl.trajectory.Trajectory",
    flatten_with_keys_fn=_flatten_with_keys,
)
