"""``SequencePolicy``: observation encoder -> residual stack of sequence layers -> actor and critic.

    e_t = enc(o_t) [⊕ onehot(a_{t-1}), r_{t-1}, d_{t-1}]        (RL²-style in-context inputs)
    x_t = W_in e_t;   x ← x + layer_i(norm_i(x)) for each layer;   f_t = norm(x_t)
    π(·|o_≤t) = head(f_t),   V(o_≤t) = w_v · f_t

The policy follows the sequence-layer contract: ``initial_state``, ``forward`` over ``(B, L, ...)``
with ``resets``, and ``step`` over ``(B, ...)``. Outputs are a :class:`PolicyOutput` of tensors, so
the whole policy works under ``functional_call``, ``grad`` (nested) and ``vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_floating, check_mask, zero_where
from .heads import ActionHead, CategoricalHead, GaussianHead, MultiDiscreteHead
from .registry import make_layer

PolicyState = tuple[tuple[Tensor, ...], ...]


class PolicyOutput(NamedTuple):
    """``dist_params``: the action head's parameters (log-probs, or mean ⊕ log-std);
    ``value``: the critic's estimate. Leading axes ``(B, L)`` in sequence mode, ``(B,)`` in step
    mode."""

    dist_params: Tensor
    value: Tensor


def is_image_space(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] in (1, 3, 4)
    )


class ImageEncoder(nn.Module):
    """A small CNN for ``(H, W, C)`` uint8 frames (Procgen's 64×64×3), scaled to [0, 1]."""

    def __init__(self, shape: tuple[int, int, int], d_out: int):
        super().__init__()
        h, w, c = shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.conv(torch.zeros(1, c, h, w)).shape[-1]
        self.out = nn.Linear(n_flat, d_out)

    def forward(self, obs: Tensor) -> Tensor:  # (N, H, W, C) -> (N, d_out)
        x = obs.to(self.out.weight.dtype).permute(0, 3, 1, 2) / 255.0
        return F.relu(self.out(self.conv(x)))


class VectorEncoder(nn.Module):
    """A two-layer tanh MLP for flat observations."""

    def __init__(self, d_in: int, d_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out), nn.Tanh()
        )

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


def make_head(action_space: gym.Space, d_in: int, box_head: str) -> ActionHead:
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalHead(d_in, int(action_space.n))
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return MultiDiscreteHead(d_in, list(np.asarray(action_space.nvec).reshape(-1)))
    if isinstance(action_space, gym.spaces.Box):
        if box_head not in ("gaussian", "tanh"):
            raise ValueError(f"box_head must be 'gaussian' or 'tanh', got {box_head!r}")
        return GaussianHead(d_in, action_space.low, action_space.high, squash=box_head == "tanh")
    raise ValueError(
        f"unsupported action space {action_space}; expected Discrete, MultiDiscrete or Box"
    )


def _prev_action_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(np.prod(space.shape))


class SequencePolicy(nn.Module):
    """An actor-critic over sequences, built from any kind in :data:`ssm.KINDS`.

    Args:
        observation_space: ``Box`` (vector, or uint8 ``(H, W, C)`` image) or ``Discrete``.
        action_space: ``Discrete``, ``MultiDiscrete`` or ``Box``.
        kind: sequence layer kind (``"mamba"``, ``"s4d"``, ``"s5"``, ``"gru"``, ``"lstm"``).
        d_model: width of the residual stream.
        n_layers: number of sequence layers.
        in_context: feed the previous action, reward and done (RL²-style meta-RL).
        box_head: ``"gaussian"`` or ``"tanh"`` (tanh-Gaussian) for Box actions.
        encoder_hidden: hidden width of the vector encoder.
        layer_kwargs: passed to :func:`ssm.make_layer` (e.g. ``d_state``, ``backend``).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        kind: str = "mamba",
        d_model: int = 64,
        n_layers: int = 2,
        in_context: bool = False,
        box_head: str = "gaussian",
        encoder_hidden: int = 128,
        layer_kwargs: dict | None = None,
    ):
        super().__init__()
        self.observation_space, self.action_space = observation_space, action_space
        self.kind, self.d_model, self.n_layers, self.in_context = (
            kind,
            d_model,
            n_layers,
            in_context,
        )
        if is_image_space(observation_space):
            self.obs_shape = tuple(observation_space.shape)
            self.encoder: nn.Module = ImageEncoder(self.obs_shape, d_model)
            enc_dim = d_model
        elif isinstance(observation_space, gym.spaces.Discrete):
            self.obs_shape = ()
            self.encoder = VectorEncoder(int(observation_space.n), d_model, encoder_hidden)
            enc_dim = d_model
        elif isinstance(observation_space, gym.spaces.Box):
            self.obs_shape = tuple(observation_space.shape)
            self.encoder = VectorEncoder(int(np.prod(self.obs_shape)), d_model, encoder_hidden)
            enc_dim = d_model
        else:
            raise ValueError(
                f"unsupported observation space {observation_space}; expected Box "
                "(vector or uint8 HxWxC image) or Discrete"
            )
        self.prev_action_dim = _prev_action_dim(action_space) if in_context else 0
        extra = self.prev_action_dim + 2 if in_context else 0
        self.in_proj = nn.Linear(enc_dim + extra, d_model)
        self.layers = nn.ModuleList(
            make_layer(kind, d_model, **(layer_kwargs or {})) for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = make_head(action_space, d_model, box_head)
        self.value = nn.Linear(d_model, 1)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.zeros_(self.value.bias)

    # -- state ----------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device=None, dtype=None) -> PolicyState:
        return tuple(layer.initial_state(batch_size, device, dtype) for layer in self.layers)

    # -- encoding -------------------------------------------------------------------------------
    def _check_obs(self, obs: Tensor, lead: int) -> None:
        if not isinstance(obs, Tensor):
            raise ValueError(f"obs must be a torch.Tensor, got {type(obs).__name__}")
        want = ("(B, L" if lead == 2 else "(B") + "".join(f", {s}" for s in self.obs_shape) + ")"
        if obs.dim() != lead + len(self.obs_shape) or tuple(obs.shape[lead:]) != self.obs_shape:
            raise ValueError(f"obs must have shape {want}, got {tuple(obs.shape)}")
        if isinstance(self.encoder, ImageEncoder):
            if obs.dtype != torch.uint8 and not obs.is_floating_point():
                raise ValueError(f"image obs must be uint8 or float, got {obs.dtype}")
        elif isinstance(self.observation_space, gym.spaces.Discrete):
            if obs.is_floating_point() or obs.is_complex():
                raise ValueError(f"Discrete obs must be an integer tensor, got {obs.dtype}")
        else:
            check_floating(obs, "obs")

    def _encode(self, obs: Tensor, lead: tuple[int, ...], prev) -> Tensor:
        n = int(np.prod(lead))
        if isinstance(self.observation_space, gym.spaces.Discrete):
            flat = F.one_hot(obs.reshape(n).long(), int(self.observation_space.n))
            flat = flat.to(self.in_proj.weight.dtype)
        elif isinstance(self.encoder, ImageEncoder):
            flat = obs.reshape(n, *self.obs_shape)
        else:
            flat = obs.reshape(n, -1)
        e = self.encoder(flat).reshape(*lead, -1)
        if self.in_context:
            e = torch.cat([e, self._context(prev, lead, e.dtype)], dim=-1)
        return self.in_proj(e)

    def _context(self, prev, lead: tuple[int, ...], dtype) -> Tensor:
        action, reward, done = prev
        if action is None or reward is None or done is None:
            raise ValueError("an in_context policy needs prev_action, prev_reward and prev_done")
        for name, t in (("prev_reward", reward), ("prev_done", done)):
            if not isinstance(t, Tensor) or tuple(t.shape) != lead:
                raise ValueError(
                    f"{name} must be a tensor of shape {lead}, got "
                    f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}"
                )
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            if tuple(action.shape) != lead:
                raise ValueError(f"prev_action must have shape {lead}, got {tuple(action.shape)}")
            a = F.one_hot(action.long(), int(space.n)).to(dtype)
        elif isinstance(space, gym.spaces.MultiDiscrete):
            nvec = [int(v) for v in np.asarray(space.nvec).reshape(-1)]
            if tuple(action.shape) != (*lead, len(nvec)):
                raise ValueError(
                    f"prev_action must have shape {(*lead, len(nvec))}, got {tuple(action.shape)}"
                )
            a = torch.cat([F.one_hot(action[..., i].long(), v) for i, v in enumerate(nvec)], -1)
            a = a.to(dtype)
        else:
            want = (*lead, *space.shape)
            if tuple(action.shape) != want:
                raise ValueError(f"prev_action must have shape {want}, got {tuple(action.shape)}")
            a = action.reshape(*lead, -1).to(dtype)
        return torch.cat([a, reward.to(dtype)[..., None], done.to(dtype)[..., None]], dim=-1)

    def _heads(self, x: Tensor) -> PolicyOutput:
        f = self.final_norm(x)
        return PolicyOutput(self.head(f), self.value(f).squeeze(-1))

    # -- the contract ---------------------------------------------------------------------------
    def forward(
        self,
        obs: Tensor,
        state: PolicyState | None = None,
        resets: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, PolicyState]:
        """Sequence mode: ``obs (B, L, *obs_shape)`` -> outputs with leading ``(B, L)``."""
        self._check_obs(obs, 2)
        lead = tuple(obs.shape[:2])
        resets = check_mask(resets, lead, "resets")
        self._check_policy_state(state)
        x = self._encode(obs, lead, (prev_action, prev_reward, prev_done))
        new_state = []
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            y, s = layer(norm(x), None if state is None else state[i], resets)
            x = x + y
            new_state.append(s)
        return self._heads(x), tuple(new_state)

    def step(
        self,
        obs: Tensor,
        state: PolicyState | None,
        reset: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, PolicyState]:
        """Recurrent mode: ``obs (B, *obs_shape)`` -> outputs with leading ``(B,)``."""
        self._check_obs(obs, 1)
        lead = (obs.shape[0],)
        reset = check_mask(reset, lead, "reset")
        self._check_policy_state(state)
        x = self._encode(obs, lead, (prev_action, prev_reward, prev_done))
        new_state = []
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            s = None if state is None else zero_where(state[i], reset)
            y, s = layer.step(norm(x), s)
            x = x + y
            new_state.append(s)
        return self._heads(x), tuple(new_state)

    def _check_policy_state(self, state) -> None:
        if state is not None and (
            not isinstance(state, (tuple, list)) or len(state) != self.n_layers
        ):
            raise ValueError(
                f"policy state must be a tuple of {self.n_layers} layer states (see initial_state)"
            )

    # -- distributions ---------------------------------------------------------------------------
    def log_prob(self, out: PolicyOutput, action: Tensor) -> Tensor:
        return self.head.log_prob(out.dist_params, action)

    def entropy(self, out: PolicyOutput) -> Tensor:
        return self.head.entropy(out.dist_params)

    def sample(self, out: PolicyOutput, generator: torch.Generator | None = None) -> Tensor:
        return self.head.sample(out.dist_params, generator)

    def mode(self, out: PolicyOutput) -> Tensor:
        return self.head.mode(out.dist_params)
