"""A self-play opponent pool: snapshots of past actor parameters, sampled per episode.

Every ``snapshot_every`` iterations the learner stores a copy of all its actor networks. At the
start of each episode (each env copy) the pool draws who plays: with probability ``p_latest``
every slot plays the current parameters; otherwise one team, chosen uniformly, plays a uniformly
chosen snapshot while the other teams play the current parameters (fictitious-self-play style,
as in Bansal et al. 2018). Slots played by a snapshot are not trained on that episode.

``versions[b, i]`` names the parameters slot ``i`` of copy ``b`` plays: 0 the current ones,
``s + 1`` snapshot ``s``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["OpponentPool"]


class OpponentPool:
    """Snapshots of a learner's actor networks (see the module docstring)."""

    def __init__(self, teams: Tensor, capacity: int, p_latest: float):
        if capacity < 1:
            raise ValueError(f"the pool capacity must be >= 1, got {capacity}")
        self.teams = torch.as_tensor(teams, dtype=torch.int64)
        self.n_teams = int(self.teams.max()) + 1
        if self.n_teams < 2:
            raise ValueError("self-play needs a game with at least two teams")
        self.capacity, self.p_latest = capacity, p_latest
        self.snapshots: list[dict] = []  # {"iteration": int, "nets": [state dict per network]}
        self._modules: list[list[nn.Module]] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def add(self, nets: list[nn.Module], iteration: int) -> None:
        """Store a frozen copy of ``nets`` (dropping the oldest snapshot when full)."""
        frozen = []
        for net in nets:
            c = copy.deepcopy(net)
            c.requires_grad_(False)
            frozen.append(c)
        sds = [{k: v.clone() for k, v in c.state_dict().items()} for c in frozen]
        self.snapshots.append({"iteration": int(iteration), "nets": sds})
        self._modules.append(frozen)
        if len(self.snapshots) > self.capacity:
            self.snapshots.pop(0)
            self._modules.pop(0)

    def net(self, snapshot: int, group: int) -> nn.Module:
        return self._modules[snapshot][group]

    def sample(self, num_envs: int, generator: torch.Generator) -> Tensor:
        """``versions (B, N)`` for one episode per env copy."""
        versions = torch.zeros(num_envs, len(self.teams), dtype=torch.int64)
        if not self.snapshots:
            return versions
        u = torch.rand(num_envs, generator=generator)
        team = torch.randint(self.n_teams, (num_envs,), generator=generator)
        snap = torch.randint(len(self.snapshots), (num_envs,), generator=generator)
        for b in range(num_envs):
            if u[b] >= self.p_latest:
                versions[b, self.teams == team[b]] = snap[b] + 1
        return versions

    def state_dict(self) -> dict:
        return {"snapshots": [{**s, "nets": list(s["nets"])} for s in self.snapshots]}

    def load_state_dict(self, state: dict, nets: list[nn.Module]) -> None:
        """Rebuild the pool from ``state`` (``nets`` are the learner's networks, as templates)."""
        self.snapshots, self._modules = [], []
        for snap in state["snapshots"]:
            frozen = []
            for net, sd in zip(nets, snap["nets"]):
                c = copy.deepcopy(net)
                c.load_state_dict(sd)
                c.requires_grad_(False)
                frozen.append(c)
            self.snapshots.append(
                {
                    "iteration": int(snap["iteration"]),
                    "nets": [{k: v.clone() for k, v in sd.items()} for sd in snap["nets"]],
                }
            )
            self._modules.append(frozen)
