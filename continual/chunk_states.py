"""The recurrent state at chunk starts (R2D2's "stored state"): the policy re-run in sequence mode
over a trajectory, for replayed chunks that start mid-sequence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from metarl.trajectory import Trajectory

__all__ = ["chunk_start_states"]


@torch.no_grad()
def chunk_start_states(
    policy: torch.nn.Module,
    traj: Trajectory,
    starts: np.ndarray,
    params: Mapping[str, Tensor] | None = None,
) -> Any:
    """The policy state before each step in ``starts`` (sorted, starting at 0), as a pytree of
    ``(B, K, ...)`` leaves: the policy runs in sequence mode from ``traj.initial_state`` over
    ``[starts[k], starts[k+1])``, with the recorded resets and in-context inputs."""
    starts = [int(s) for s in starts]
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"starts must be increasing and begin at 0, got {starts}")
    in_context = getattr(policy, "in_context", False)

    def run(state, a: int, b: int):
        sl = slice(a, b)
        kwargs: dict[str, Any] = {"state": state, "resets": traj.resets[sl].transpose(0, 1)}
        if in_context:
            kwargs.update(
                prev_action=traj.prev_actions[sl].transpose(0, 1),
                prev_reward=traj.prev_rewards[sl].transpose(0, 1),
                prev_done=traj.prev_dones[sl].transpose(0, 1),
            )
        obs = traj.obs[sl].transpose(0, 1)
        if params is None:
            _, new_state = policy(obs, **kwargs)
        else:
            _, new_state = torch.func.functional_call(policy, dict(params), (obs,), kwargs)
        return new_state

    states = [traj.initial_state]
    for a, b in zip(starts, starts[1:]):
        states.append(run(states[-1], a, b))
    return pytree.tree_map(lambda *xs: torch.stack(xs, dim=1), *states)
