"""Curiosity bonuses as reward plugins: RND and ICM, with running reward normalisation.

A plugin has two methods, and any learner can use one (``skills.intrinsic.IntrinsicRewardVecEnv``
adds plugins to a vector environment, so PPO and the rollout engine need no change)::

    intrinsic_reward(obs, next_obs, actions) -> (N,) tensor     (no gradient; may update stats)
    update(batch) -> dict of float losses                        (batch: obs, next_obs, actions)

Both normalise observations by a running mean and standard deviation and divide the reward by
the running standard deviation of the raw bonus, so its scale stays comparable over training.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class RewardPlugin(Protocol):
    def intrinsic_reward(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> Tensor: ...

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]: ...


class RunningMeanStd(nn.Module):
    """Running mean and variance over a stream of batches (Chan et al.'s parallel update)::

    δ = μ_b - μ,  n' = n + n_b,  μ' = μ + δ n_b / n',
    M' = σ² n + σ_b² n_b + δ² n n_b / n',  σ'² = M' / n'
    """

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().double().reshape(-1, *self.mean.shape)
        if x.shape[0] == 0:
            return
        b_mean, b_var, b_n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_n
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total
        self.mean.copy_(self.mean + delta * b_n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: Tensor, clip: float | None = 5.0) -> Tensor:
        y = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + 1e-8)
        return y.clamp(-clip, clip) if clip is not None else y


def _mlp(d_in: int, hidden: int, d_out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class _Plugin(nn.Module, abc.ABC):
    """Observation and reward normalisation shared by RND and ICM."""

    def __init__(
        self,
        obs_dim: int,
        normalize_obs: bool,
        normalize_reward: bool,
        update_epochs: int = 4,
        minibatch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.obs_dim = obs_dim
        self._shuffle = torch.Generator().manual_seed(seed)
        self.update_epochs, self.minibatch_size = update_epochs, minibatch_size
        self.normalize_obs, self.normalize_reward = normalize_obs, normalize_reward
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.reward_rms = RunningMeanStd(())

    def _obs(self, obs: Tensor) -> Tensor:
        x = obs.reshape(obs.shape[0], -1).float()
        if x.shape[1] != self.obs_dim:
            raise ValueError(
                f"{type(self).__name__} expects obs of size {self.obs_dim}, got {tuple(obs.shape)}"
            )
        return self.obs_rms.normalize(x) if self.normalize_obs else x

    @abc.abstractmethod
    def raw_reward(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> Tensor:
        """The unnormalised bonus of each transition (implemented by RND and ICM)."""

    @abc.abstractmethod
    def _loss(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> tuple[Tensor, dict]:
        """The plugin's own training loss and its statistics (implemented by RND and ICM)."""

    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """``update_epochs`` passes of Adam over shuffled minibatches of the transitions in
        ``batch`` (``obs``, ``next_obs``, ``actions``); the observation statistics are updated
        first, with the batch's next observations. Returns the last minibatch's losses."""
        obs, next_obs, actions = batch["obs"], batch["next_obs"], batch["actions"]
        n = next_obs.shape[0]
        if self.normalize_obs:
            self.obs_rms.update(next_obs.reshape(n, -1))
        stats: dict[str, float] = {}
        for _ in range(self.update_epochs):
            order = torch.randperm(n, generator=self._shuffle)
            for start in range(0, n, self.minibatch_size):
                idx = order[start : start + self.minibatch_size]
                loss, stats = self._loss(obs[idx], next_obs[idx], actions[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        return stats

    @torch.no_grad()
    def intrinsic_reward(
        self, obs: Tensor, next_obs: Tensor, actions: Tensor, update_stats: bool = True
    ) -> Tensor:
        """The normalised bonus ``r / σ_r`` (``σ_r``: the running std of the raw bonus, updated
        with this batch when ``update_stats``)."""
        raw = self.raw_reward(obs, next_obs, actions)
        if not self.normalize_reward:
            return raw
        if update_stats:
            self.reward_rms.update(raw)
        return raw / torch.sqrt(self.reward_rms.var.to(raw.dtype) + 1e-8)


class RND(_Plugin):
    """Random network distillation (Burda et al., 2019).

    A fixed, randomly initialised target ``f`` and a trained predictor ``f̂`` embed the next
    observation; the bonus is the prediction error ``r = ||f̂(s') - f(s')||²``, large for states
    unlike those the predictor was trained on.
    """

    def __init__(
        self,
        obs_dim: int,
        feature_dim: int = 64,
        hidden: int = 128,
        lr: float = 1e-3,
        normalize_obs: bool = True,
        normalize_reward: bool = True,
        update_epochs: int = 4,
        minibatch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__(
            obs_dim, normalize_obs, normalize_reward, update_epochs, minibatch_size, seed
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.target = _mlp(obs_dim, hidden, feature_dim)
            self.predictor = _mlp(obs_dim, hidden, feature_dim, layers=3)
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=lr)

    def _error(self, next_obs: Tensor) -> Tensor:
        x = self._obs(next_obs)
        return (self.predictor(x) - self.target(x)).pow(2).sum(-1)  # (N,)

    @torch.no_grad()
    def raw_reward(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> Tensor:
        return self._error(next_obs)

    def _loss(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> tuple[Tensor, dict]:
        loss = self._error(next_obs).mean()
        return loss, {"rnd_loss": loss.item()}


class ICM(_Plugin):
    """Intrinsic curiosity module (Pathak et al., 2017).

    An encoder ``φ``, an inverse model ``g(φ(s), φ(s')) ≈ a`` (which shapes ``φ`` to keep what the
    agent controls) and a forward model ``f(φ(s), a) ≈ φ(s')``. The bonus is the forward error
    ``r = ½ ||f(φ(s), a) - φ(s')||²``; the loss is ``(1 - β) L_inverse + β L_forward``.

    ``n_actions`` for discrete actions (cross-entropy inverse loss, one-hot actions into ``f``),
    or ``action_dim`` for continuous ones (squared-error inverse loss).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int | None = None,
        action_dim: int | None = None,
        feature_dim: int = 32,
        hidden: int = 128,
        beta: float = 0.2,
        lr: float = 1e-3,
        normalize_obs: bool = True,
        normalize_reward: bool = True,
        update_epochs: int = 4,
        minibatch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__(
            obs_dim, normalize_obs, normalize_reward, update_epochs, minibatch_size, seed
        )
        if (n_actions is None) == (action_dim is None):
            raise ValueError("give exactly one of n_actions (discrete) and action_dim (continuous)")
        self.n_actions, self.action_dim = n_actions, action_dim
        a_dim = n_actions if n_actions is not None else action_dim
        self.beta = beta
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # tanh bounds φ: the inverse loss alone would let its scale (and the bonus) drift up
            self.encoder = nn.Sequential(_mlp(obs_dim, hidden, feature_dim, layers=1), nn.Tanh())
            self.inverse = _mlp(2 * feature_dim, hidden, a_dim, layers=1)
            self.forward_model = _mlp(feature_dim + a_dim, hidden, feature_dim, layers=1)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def _action_input(self, actions: Tensor) -> Tensor:
        if self.n_actions is not None:
            return F.one_hot(actions.long().reshape(-1), self.n_actions).float()
        return actions.reshape(actions.shape[0], -1).float()

    def _losses(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        phi, phi_next = self.encoder(self._obs(obs)), self.encoder(self._obs(next_obs))
        a = self._action_input(actions)
        # the forward model must not move φ towards the trivial constant embedding: stop its
        # gradient into φ(s'), as in the paper's implementation
        pred_next = self.forward_model(torch.cat([phi, a], dim=-1))
        forward = 0.5 * (pred_next - phi_next.detach()).pow(2).sum(-1)  # (N,)
        logits = self.inverse(torch.cat([phi, phi_next], dim=-1))
        if self.n_actions is not None:
            inverse = F.cross_entropy(logits, actions.long().reshape(-1), reduction="none")
        else:
            inverse = 0.5 * (logits - a).pow(2).sum(-1)
        return forward, inverse

    @torch.no_grad()
    def raw_reward(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> Tensor:
        forward, _ = self._losses(obs, next_obs, actions)
        return forward

    def _loss(self, obs: Tensor, next_obs: Tensor, actions: Tensor) -> tuple[Tensor, dict]:
        forward, inverse = self._losses(obs, next_obs, actions)
        loss = (1 - self.beta) * inverse.mean() + self.beta * forward.mean()
        stats = {
            "icm_forward_loss": forward.mean().item(),
            "icm_inverse_loss": inverse.mean().item(),
        }
        return loss, stats
