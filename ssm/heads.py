"""Action heads for :class:`ssm.SequencePolicy`.

A head maps features to a flat tensor of distribution parameters and computes ``log_prob``,
``entropy``, ``sample`` and ``mode`` from those parameters with plain tensor arithmetic (no
``torch.distributions`` objects), so that every method works under ``torch.func`` transforms and
the parameters can travel inside trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_2PI = math.log(2 * math.pi)


class ActionHead(nn.Module):
    """``forward(features (..., F)) -> params (..., param_dim)``."""

    param_dim: int
    action_shape: tuple[int, ...]
    action_dtype: torch.dtype

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor: ...
    def entropy(self, params: Tensor) -> Tensor: ...
    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor: ...
    def mode(self, params: Tensor) -> Tensor: ...


class CategoricalHead(ActionHead):
    def __init__(self, d_in: int, n: int):
        super().__init__()
        self.n, self.param_dim, self.action_shape, self.action_dtype = n, n, (), torch.int64
        self.linear = nn.Linear(d_in, n)
        nn.init.orthogonal_(self.linear.weight, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: Tensor) -> Tensor:
        return F.log_softmax(self.linear(h), dim=-1)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        return torch.gather(params, -1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: Tensor) -> Tensor:
        return -(params.exp() * params).sum(-1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        flat = params.reshape(-1, self.n).exp()
        return torch.multinomial(flat, 1, generator=generator).reshape(params.shape[:-1])

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)


class MultiDiscreteHead(ActionHead):
    def __init__(self, d_in: int, nvec: list[int]):
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.param_dim, self.action_shape = sum(self.nvec), (len(self.nvec),)
        self.action_dtype = torch.int64
        self.heads = nn.ModuleList(CategoricalHead(d_in, n) for n in self.nvec)

    def _split(self, params: Tensor) -> list[Tensor]:
        return list(torch.split(params, self.nvec, dim=-1))

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([head(h) for head in self.heads], dim=-1)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        return sum(
            hd.log_prob(p, action[..., i])
            for i, (hd, p) in enumerate(zip(self.heads, self._split(params)))
        )

    def entropy(self, params: Tensor) -> Tensor:
        return sum(hd.entropy(p) for hd, p in zip(self.heads, self._split(params)))

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.stack(
            [hd.sample(p, generator) for hd, p in zip(self.heads, self._split(params))], dim=-1
        )

    def mode(self, params: Tensor) -> Tensor:
        return torch.stack([p.argmax(-1) for p in self._split(params)], dim=-1)


class GaussianHead(ActionHead):
    """Diagonal Gaussian with a state-independent log standard deviation. With ``squash=True`` the
    sample is passed through tanh and rescaled to ``[low, high]`` (tanh-Gaussian, as in SAC); its
    ``entropy`` is then the entropy of the pre-squash Gaussian (the squashed one has no closed
    form)."""

    def __init__(
        self,
        d_in: int,
        low: np.ndarray,
        high: np.ndarray,
        squash: bool = False,
        log_std_init: float = 0.0,
    ):
        super().__init__()
        self.action_shape = tuple(low.shape)
        dim = int(np.prod(self.action_shape))
        self.dim, self.param_dim, self.squash = dim, 2 * dim, squash
        self.action_dtype = torch.float32
        self.mean = nn.Linear(d_in, dim)
        nn.init.orthogonal_(self.mean.weight, 0.01)
        nn.init.zeros_(self.mean.bias)
        self.log_std = nn.Parameter(torch.full((dim,), float(log_std_init)))
        finite = np.isfinite(low).all() and np.isfinite(high).all()
        if squash and not finite:
            raise ValueError("a tanh-Gaussian head needs a bounded Box action space")
        lo = torch.as_tensor(np.where(np.isfinite(low), low, -1.0), dtype=torch.float32)
        hi = torch.as_tensor(np.where(np.isfinite(high), high, 1.0), dtype=torch.float32)
        self.register_buffer("low", lo.reshape(-1), persistent=False)
        self.register_buffer("high", hi.reshape(-1), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        mean = self.mean(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params.chunk(2, dim=-1)
        return mean, log_std

    def _flat(self, action: Tensor) -> Tensor:
        return action.reshape(*action.shape[: action.dim() - len(self.action_shape)], self.dim)

    def _unflat(self, a: Tensor) -> Tensor:
        return a.reshape(*a.shape[:-1], *self.action_shape)

    def _gauss_log_prob(self, mean, log_std, u):
        return (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * _LOG_2PI).sum(-1)

    def log_prob(self, params: Tensor, action: Tensor) -> Tensor:
        mean, log_std = self._split(params)
        a = self._flat(action).to(mean.dtype)
        if not self.squash:
            return self._gauss_log_prob(mean, log_std, a)
        half = (self.high - self.low).to(mean.dtype) / 2
        t = ((a - self.low.to(mean.dtype)) / half - 1).clamp(-1 + 1e-6, 1 - 1e-6)
        u = torch.atanh(t)
        # change of variables a = low + half (tanh(u) + 1): log|da/du| = log half + log(1 - t²)
        return self._gauss_log_prob(mean, log_std, u) - (torch.log(half) + torch.log1p(-t * t)).sum(
            -1
        )

    def entropy(self, params: Tensor) -> Tensor:
        _, log_std = self._split(params)
        return (log_std + 0.5 * (1 + _LOG_2PI)).sum(-1)

    def _squash(self, u: Tensor) -> Tensor:
        lo, hi = self.low.to(u.dtype), self.high.to(u.dtype)
        return lo + (hi - lo) * (torch.tanh(u) + 1) / 2

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = self._split(params)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        u = mean + log_std.exp() * noise
        return self._unflat(self._squash(u) if self.squash else u)

    def mode(self, params: Tensor) -> Tensor:
        mean, _ = self._split(params)
        return self._unflat(self._squash(mean) if self.squash else mean)


def head_kl(head: ActionHead, old: Tensor, new: Tensor) -> Tensor:
    """``KL(π_old ‖ π_new)`` per sample from two tensors ``(..., P)`` of ``head``'s distribution
    parameters; returns ``(...)``.

    Categorical: ``Σ p_old (log p_old - log p_new)`` (the parameters are log-probabilities);
    multi-discrete: the sum over components. Diagonal Gaussian, per dimension:
    ``log σ₁/σ₀ + (σ₀² + (μ₀ - μ₁)²) / (2σ₁²) - ½``; a tanh-squashed Gaussian has the same KL as
    its pre-squash Gaussian (the squash is a bijection).
    """
    if isinstance(head, CategoricalHead):
        return (old.exp() * (old - new)).sum(-1)
    if isinstance(head, MultiDiscreteHead):
        olds, news = head._split(old), head._split(new)
        return sum(head_kl(h, o, n) for h, o, n in zip(head.heads, olds, news, strict=True))
    if isinstance(head, GaussianHead):
        mu0, ls0 = head._split(old)
        mu1, ls1 = head._split(new)
        var0, var1 = (2 * ls0).exp(), (2 * ls1).exp()
        return (ls1 - ls0 + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5).sum(-1)
    raise ValueError(f"no closed-form KL for the action head {type(head).__name__}")


def make_head(action: Mapping[str, Any], d_in: int, box_head: str = "gaussian") -> ActionHead:
    """The head for a JSON action space (:mod:`ssm.spec`): categorical for ``discrete``, one
    categorical per component for ``multidiscrete``, a (tanh-)Gaussian for ``box``."""
    if action["type"] == "discrete":
        return CategoricalHead(d_in, int(action["n"]))
    if action["type"] == "multidiscrete":
        return MultiDiscreteHead(d_in, [int(n) for n in action["nvec"]])
    if box_head not in ("gaussian", "tanh"):
        raise ValueError(f"box_head must be 'gaussian' or 'tanh', got {box_head!r}")
    shape = tuple(action["shape"])
    low = np.array([float(v) for v in action["low"]]).reshape(shape)
    high = np.array([float(v) for v in action["high"]]).reshape(shape)
    return GaussianHead(d_in, low, high, squash=box_head == "tanh")
