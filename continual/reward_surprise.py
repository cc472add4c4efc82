"""Reward surprise: a label-free drift stream that sees a change of the reward function.

A switch of task distribution changes ``p(r | s, a)``, the reward the environment pays for a
state and action. That change is a property of the tasks, not of the policy: it shows up whether
or not the policy gets worse. The return before adaptation, by contrast, moves only when the
meta-initialisation's behaviour happens to pay less on the new tasks (nav2d goals moving from the
south-west to the north-west quadrant barely change it); and the observations alone do not change
at all until the policy does.

:class:`RewardSurprise` keeps a reward model fit on the recent iterations of any learner's data
(PPO's rollouts, RL²'s trials, a meta-learner's support trajectories collected with θ) and, for
each new iteration, *before* the model sees it, measures how much worse it predicts the new
rewards than it fits the old ones (a prequential test). The learner gives it every fresh
trajectory of the iteration: a meta-learner's support *and* query data, since the adapted
policies go where the tasks' rewards are (θ alone may stay where two distributions pay the same:
nav2d's west, between south-west and north-west goals)::

    φ(s, a)  = [1, z, z_i z_j (i ≤ j)]             z = [observation, action]   (quadratic)
               [1, z]                                                           (linear)
    A ← γ A + Σ φ φᵀ,  b ← γ b + Σ φ r,  c ← γ c + Σ r²,  n ← γ n + N          (after the test)
    w = (A + ε tr(A)/p · I)⁻¹ b                   the ridge fit (ε = 1e-6, for conditioning)
    fit  = (c − 2 wᵀb + wᵀ A w) / n                the model's mean squared residual on its data
    pred = mean over the new iteration of (φᵀw − r)²
    value = log(pred + η) − log(fit + η)           η = 1e-8 · (c / n) keeps it finite

A model of the stage's task *mixture* predicts each task's reward up to that mixture's spread, so
within a stage ``value`` stays near 0; new tasks from elsewhere raise ``pred`` by the squared
shift of the reward function at the visited states, and ``value`` jumps. γ (``forget``) bounds
the window (1 / (1 − γ) iterations), so the model follows the policy into new regions of the
state space. The learner resets the model at every detection: the new distribution starts a
fresh fit. Actions enter clipped to a Box's bounds (what the environment applies) or one-hot for a
Discrete space; observations enter flattened.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from metarl.trajectory import Trajectory

__all__ = ["REWARD_SURPRISE_SCHEMA_VERSION", "RewardSurprise"]

REWARD_SURPRISE_SCHEMA_VERSION = 1
_RIDGE = 1e-6
_FLOOR = 1e-8


def _input_width(space: gym.Space, what: str) -> int:
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    raise ValueError(
        f"drift.stream=reward_surprise needs a Box or Discrete {what} space, got "
        f"{type(space).__name__}"
    )


class RewardSurprise:
    """Prequential surprise of a ridge reward model (see the module docstring).

    Args:
        observation_space, action_space: the environments' spaces (Box or Discrete).
        features: ``"quadratic"`` or ``"linear"`` in ``[observation, action]``.
        forget: γ, the decay of older iterations' statistics per update, in [0, 1).
        max_features: refuse a feature map wider than this (an image observation, say).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        features: str = "quadratic",
        forget: float = 0.8,
        max_features: int = 2048,
    ):
        if features not in ("quadratic", "linear"):
            raise ValueError(f"reward features must be 'quadratic' or 'linear', got {features!r}")
        if not 0.0 <= forget < 1.0:
            raise ValueError(f"drift.reward_forget must be in [0, 1), got {forget!r}")
        self.features, self.forget = features, float(forget)
        self._obs_width = _input_width(observation_space, "observation")
        self._action_discrete = isinstance(action_space, gym.spaces.Discrete)
        self._act_width = _input_width(action_space, "action")
        self._low = self._high = None
        if isinstance(action_space, gym.spaces.Box):
            self._low = torch.as_tensor(action_space.low, dtype=torch.float64).reshape(-1)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float64).reshape(-1)
        z = self._obs_width + self._act_width
        self.width = 1 + z + (z * (z + 1) // 2 if features == "quadratic" else 0)
        if self.width > max_features:
            raise ValueError(
                f"drift.stream=reward_surprise: {features} features of a {self._obs_width}-wide "
                f"observation and {self._act_width}-wide action are {self.width} wide (at most "
                f"{max_features}); use drift.reward_features=linear or another stream"
            )
        if features == "quadratic":
            rows, cols = torch.triu_indices(z, z)
            self._pairs = (rows, cols)
        self.reset()

    def reset(self) -> None:
        """Forget the fit (a detection: the next iteration starts the new distribution's)."""
        p = self.width
        self._A = torch.zeros(p, p, dtype=torch.float64)
        self._b = torch.zeros(p, dtype=torch.float64)
        self._c = torch.zeros((), dtype=torch.float64)
        self._n = torch.zeros((), dtype=torch.float64)

    def design(self, batch: Trajectory | Sequence[Trajectory]) -> tuple[Tensor, Tensor]:
        """``(Φ, r)``: the feature rows and rewards of every step of ``batch`` (one trajectory
        or several)."""
        if isinstance(batch, Sequence):
            parts = [self.design(b) for b in batch]
            if not parts:
                empty = torch.zeros(0, dtype=torch.float64)
                return torch.zeros(0, self.width, dtype=torch.float64), empty
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        obs = batch.obs.to(torch.float64).reshape(batch.T * batch.B, -1)
        if obs.shape[1] != self._obs_width:
            raise ValueError(
                f"reward surprise: observations are {obs.shape[1]} wide, expected "
                f"{self._obs_width}"
            )
        if self._action_discrete:
            act = torch.nn.functional.one_hot(
                batch.actions.reshape(-1).long(), self._act_width
            ).to(torch.float64)
        else:
            act = batch.actions.to(torch.float64).reshape(batch.T * batch.B, -1)
            act = torch.maximum(torch.minimum(act, self._high), self._low)
        z = torch.cat([obs, act], dim=1)
        cols = [torch.ones(z.shape[0], 1, dtype=torch.float64), z]
        if self.features == "quadratic":
            rows, pair = self._pairs
            cols.append(z[:, rows] * z[:, pair])
        return torch.cat(cols, dim=1), batch.rewards.to(torch.float64).reshape(-1)

    def _weights(self) -> Tensor:
        p = self.width
        ridge = _RIDGE * max(float(torch.trace(self._A)) / p, 1e-12)
        eye = torch.eye(p, dtype=torch.float64)
        return torch.linalg.solve(self._A + ridge * eye, self._b)

    def update(self, batch: Trajectory | Sequence[Trajectory]) -> float:
        """Test the model on ``batch`` (an iteration's fresh trajectories), then absorb it;
        returns the surprise (NaN before the model has seen any data, or if ``batch`` has no
        steps)."""
        phi, r = self.design(batch)
        if phi.shape[0] == 0:
            return math.nan
        value = math.nan
        if float(self._n) > 0:
            w = self._weights()
            n = float(self._n)
            fit = float(self._c - 2 * w @ self._b + w @ self._A @ w) / n
            pred = float(((phi @ w - r) ** 2).mean())
            floor = _FLOOR * float(self._c) / n + 1e-300
            value = math.log(pred + floor) - math.log(max(fit, 0.0) + floor)
        g = self.forget
        self._A = g * self._A + phi.T @ phi
        self._b = g * self._b + phi.T @ r
        self._c = g * self._c + r @ r
        self._n = g * self._n + phi.shape[0]
        return value

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REWARD_SURPRISE_SCHEMA_VERSION,
            "features": self.features,
            "forget": self.forget,
            "width": self.width,
            "A": self._A.clone(),
            "b": self._b.clone(),
            "c": self._c.clone(),
            "n": self._n.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (
            not isinstance(state, Mapping)
            or state.get("schema_version") != REWARD_SURPRISE_SCHEMA_VERSION
        ):
            raise ValueError(
                f"not a reward-surprise state of schema_version {REWARD_SURPRISE_SCHEMA_VERSION}"
            )
        mine = (self.features, self.forget, self.width)
        theirs = (state["features"], state["forget"], state["width"])
        if theirs != mine:
            raise ValueError(f"reward-surprise state is for {theirs}, this model is {mine}")
        p = self.width
        shapes = {"A": (p, p), "b": (p,), "c": (), "n": ()}
        for key, shape in shapes.items():
            t = state[key]
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"reward-surprise state {key!r} must be a tensor of shape {shape}")
        self._A, self._b = state["A"].to(torch.float64), state["b"].to(torch.float64)
        self._c, self._n = state["c"].to(torch.float64), state["n"].to(torch.float64)
