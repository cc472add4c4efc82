"""``MultiAgentBatch``: ``B`` whole episodes of ``N`` agent slots in ``(T, B, N, ...)`` layout.

Step ``t`` acts on ``obs[t]`` and receives ``rewards[t]``. Masks say which entries count:

- ``alive[t, b, i]``: slot ``i`` acted at step ``t`` (absent and dead slots did not);
- ``decided[t, b, i]``: its policy chose at step ``t`` (always, except for option agents, which
  choose a skill every ``k`` steps and hold it in between);
- ``trainable[b, i]``: the slot played the current parameters (not a self-play snapshot).

The PPO policy loss counts ``alive & decided & trainable`` entries; the value loss ``alive &
trainable`` ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MultiAgentBatch"]


@dataclass
class MultiAgentBatch:
    obs: Tensor
    """(T, B, N, D) observations (zeros for slots that are not alive)"""
    alive: Tensor
    """(T, B, N) bool: the slot acted at step t"""
    actions: Tensor
    """(T, B, N) int64: the policy's action (the held skill index for option agents)"""
    env_actions: Tensor
    """(T, B, N) int64: the primitive action sent to the game"""
    rewards: Tensor
    """(T, B, N) rewards"""
    terminated: Tensor
    """(T, B, N) bool: the slot's episode ended in a terminal state at step t"""
    truncated: Tensor
    """(T, B, N) bool: the slot's episode hit the time limit at step t"""
    log_probs: Tensor
    """(T, B, N) log π(action) under the acting parameters"""
    values: Tensor
    """(T, B, N) value estimates while acting (the actor's own, or the central critic's)"""
    bootstrap_values: Tensor
    """(T, B, N) V(final observation) where truncated, else 0"""
    decided: Tensor
    """(T, B, N) bool: the policy chose at step t"""
    roles: Tensor
    """(T, B, N) int64 role each slot filled after step t (-1: none)"""
    trainable: Tensor
    """(B, N) bool: the slot played the current parameters"""
    versions: Tensor
    """(B, N) int64: 0 current parameters, s + 1 self-play snapshot s"""

    @property
    def T(self) -> int:
        return self.obs.shape[0]

    @property
    def B(self) -> int:
        return self.obs.shape[1]

    @property
    def N(self) -> int:
        return self.obs.shape[2]

    def select(self, idx: Tensor) -> MultiAgentBatch:
        """The episodes ``idx`` (a 1-D index over ``B``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if f.name in ("trainable", "versions") else v[:, idx]
        return MultiAgentBatch(**out)

    def episode_returns(self) -> Tensor:
        """(B, N) each slot's summed reward over the episode."""
        return self.rewards.sum(0)

    def present(self) -> Tensor:
        """(B, N) bool: the slot took part in the episode."""
        return self.alive.any(0)

    def to_policy_mask(self) -> Tensor:
        return self.alive & self.decided & self.trainable[None]

    def to_value_mask(self) -> Tensor:
        return self.alive & self.trainable[None]

    @staticmethod
    def stack(steps: list[dict[str, Tensor]], **per_episode: Tensor) -> MultiAgentBatch:
        keys = steps[0].keys()
        return MultiAgentBatch(
            **{k: torch.stack([s[k] for s in steps]) for k in keys}, **per_episode
        )
