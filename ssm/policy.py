"""``SequencePolicy``: observation encoder -> residual stack of sequence layers -> actor and critic.

    e_t = enc(o_t ⊕ c) [⊕ onehot(a_{t-1}), r_{t-1}, d_{t-1}]    (c: the spec's condition; RL²-style
                                                                in-context inputs)
    x_t = W_in e_t;   x ← x + layer_i(norm_i(x)) for each layer;   f_t = norm(x_t)
    π(·|o_≤t) = head(f_t),   V(o_≤t) = w_v · f_t

The network is specified by data: a :class:`~ssm.spec.PolicySpec` (JSON), from which
:meth:`SequencePolicy.from_spec` builds it without gymnasium. The policy follows the
sequence-layer contract: ``initial_state``, ``forward`` over ``(B, L, ...)`` with ``resets``, and
``step`` over ``(B, ...)``. Outputs are a :class:`PolicyOutput` of tensors, and the norms are
composite (:mod:`ssm.norm`), so the whole policy works under ``functional_call``, ``grad``
(nested) and ``vmap`` with exact derivatives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_floating, check_mask
from .heads import make_head
from .norm import LayerNorm
from .spec import DTYPES, PolicySpec, is_image, space_from_json
from .stack import (
    StackState,
    check_stack_state,
    make_stack,
    residual_forward,
    residual_step,
    stack_initial_state,
)

PolicyState = StackState


class PolicyOutput(NamedTuple):
    """``dist_params``: the action head's parameters (log-probs, or mean ⊕ log-std);
    ``value``: the critic's estimate. Leading axes ``(B, L)`` in sequence mode, ``(B,)`` in step
    mode."""

    dist_params: Tensor
    value: Tensor


def is_image_space(space: Any) -> bool:
    """A gymnasium space that the policy reads with its CNN: a uint8 ``(H, W, C)`` Box, C in 1,
    3, 4 (the rule of :func:`ssm.spec.is_image`)."""
    import gymnasium as gym

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


def _default_dtype() -> str:
    name = str(torch.get_default_dtype()).removeprefix("torch.")
    return name if name in DTYPES else "float32"


class SequencePolicy(nn.Module):
    """An actor-critic over sequences, built from any kind in :data:`ssm.KINDS`.

    Build it from a :class:`~ssm.spec.PolicySpec` with :meth:`from_spec` (no gymnasium), or from
    gymnasium spaces with the constructor, which writes the spec and builds the same network.
    ``policy.spec`` describes any policy.

    Args:
        observation_space: ``Box`` (vector, or uint8 ``(H, W, C)`` image) or ``Discrete``.
        action_space: ``Discrete``, ``MultiDiscrete`` or ``Box``.
        kind: sequence layer kind (``"mamba"``, ``"mamba2"``, ``"s4d"``, ``"s5"``, ``"gru"``,
            ``"lstm"``).
        d_model: width of the residual stream.
        n_layers: number of sequence layers.
        in_context: feed the previous action, reward and done (RL²-style meta-RL).
        box_head: ``"gaussian"`` or ``"tanh"`` (tanh-Gaussian) for Box actions.
        encoder_hidden: hidden width of the vector encoder.
        layer_kwargs: passed to :func:`ssm.make_layer` (e.g. ``d_state``, ``backend``).
        norm: LayerNorm placement, ``"pre"``, ``"post"`` or ``"none"`` (:mod:`ssm.stack`).
        spec: a :class:`~ssm.spec.PolicySpec` instead of all of the above.
    """

    def __init__(
        self,
        observation_space: Any = None,
        action_space: Any = None,
        kind: str = "mamba",
        d_model: int = 64,
        n_layers: int = 2,
        in_context: bool = False,
        box_head: str = "gaussian",
        encoder_hidden: int = 128,
        layer_kwargs: dict | None = None,
        norm: str = "pre",
        *,
        spec: PolicySpec | None = None,
    ):
        super().__init__()
        if spec is None:
            spec = PolicySpec.from_spaces(
                observation_space,
                action_space,
                kind=kind,
                d_model=d_model,
                n_layers=n_layers,
                in_context=in_context,
                box_head=box_head,
                encoder_hidden=encoder_hidden,
                layer_kwargs=dict(layer_kwargs or {}),
                dtype=_default_dtype(),
                norm=norm,
            )
        elif observation_space is not None or action_space is not None:
            raise ValueError("pass either spaces or a spec to SequencePolicy, not both")
        elif not isinstance(spec, PolicySpec):
            raise ValueError(f"spec must be an ssm.PolicySpec, got {type(spec).__name__}")
        self._spec = spec
        self.kind, self.d_model, self.n_layers = spec.kind, spec.d_model, spec.n_layers
        self.in_context, self.obs_shape = spec.in_context, spec.obs_shape
        obs = spec.observation
        self._image, self._discrete_obs = is_image(obs), obs["type"] == "discrete"
        if self._image:
            self.encoder: nn.Module = ImageEncoder(self.obs_shape, spec.d_model)
        else:
            d_in = obs["n"] if self._discrete_obs else int(np.prod(self.obs_shape))
            d_in += len(spec.condition)
            self.encoder = VectorEncoder(d_in, spec.d_model, spec.encoder_hidden)
        # not persistent: the condition is part of the spec, not of the parameters
        condition = torch.tensor(spec.condition, dtype=torch.float32) if spec.condition else None
        self.register_buffer("condition", condition, persistent=False)
        self.prev_action_dim = spec.prev_action_dim if spec.in_context else 0
        extra = self.prev_action_dim + 2 if spec.in_context else 0
        self.in_proj = nn.Linear(spec.d_model + extra, spec.d_model)
        self.layers, self.norms = make_stack(
            spec.kind, spec.d_model, spec.n_layers, spec.layer_kwargs, spec.norm
        )
        self.final_norm = nn.Identity() if spec.norm == "none" else LayerNorm(spec.d_model)
        self.head = make_head(spec.action, spec.d_model, spec.box_head)
        self.value = nn.Linear(spec.d_model, 1)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.zeros_(self.value.bias)
        if spec.dtype != _default_dtype():
            self.to(getattr(torch, spec.dtype))

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> SequencePolicy:
        """The policy ``spec`` describes (fresh initial parameters; load a state dict)."""
        return cls(spec=spec)

    @property
    def spec(self) -> PolicySpec:
        """The spec of this policy (its ``dtype`` follows ``.to()``/``.double()``)."""
        dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        if dtype != self._spec.dtype and dtype in DTYPES:
            return dataclasses.replace(self._spec, dtype=dtype)
        return self._spec

    @property
    def observation_space(self):
        """The observation space as a gymnasium space (imports gymnasium)."""
        return space_from_json(self._spec.observation)

    @property
    def action_space(self):
        """The action space as a gymnasium space (imports gymnasium)."""
        return space_from_json(self._spec.action)

    # -- state ----------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device=None, dtype=None) -> PolicyState:
        return stack_initial_state(self.layers, batch_size, device, dtype)

    # -- encoding -------------------------------------------------------------------------------
    def _check_obs(self, obs: Tensor, lead: int) -> None:
        if not isinstance(obs, Tensor):
            raise ValueError(f"obs must be a torch.Tensor, got {type(obs).__name__}")
        want = ("(B, L" if lead == 2 else "(B") + "".join(f", {s}" for s in self.obs_shape) + ")"
        if obs.dim() != lead + len(self.obs_shape) or tuple(obs.shape[lead:]) != self.obs_shape:
            raise ValueError(f"obs must have shape {want}, got {tuple(obs.shape)}")
        if self._image:
            if obs.dtype != torch.uint8 and not obs.is_floating_point():
                raise ValueError(f"image obs must be uint8 or float, got {obs.dtype}")
        elif self._discrete_obs:
            if obs.is_floating_point() or obs.is_complex():
                raise ValueError(f"Discrete obs must be an integer tensor, got {obs.dtype}")
        else:
            check_floating(obs, "obs")

    def embed(
        self,
        obs: Tensor,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> Tensor:
        """The input of the residual stack, ``x = W_in [enc(o ⊕ c) ⊕ context]``, for any leading
        axes: ``obs (..., *obs_shape) -> (..., d_model)`` (unchecked; ``forward`` and ``step``
        check their inputs)."""
        lead = tuple(obs.shape[: obs.dim() - len(self.obs_shape)])
        n = int(np.prod(lead))
        if self._discrete_obs:
            flat = F.one_hot(obs.reshape(n).long(), self._spec.observation["n"])
            flat = flat.to(self.in_proj.weight.dtype)
        elif self._image:
            flat = obs.reshape(n, *self.obs_shape)
        else:
            flat = obs.reshape(n, -1)
        if self.condition is not None:
            flat = torch.cat([flat, self.condition.to(flat.dtype).expand(n, -1)], dim=-1)
        e = self.encoder(flat).reshape(*lead, -1)
        if self.in_context:
            e = torch.cat(
                [e, self._context((prev_action, prev_reward, prev_done), lead, e.dtype)], -1
            )
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
        space = self._spec.action
        if not isinstance(action, Tensor):
            raise ValueError(f"prev_action must be a tensor, got {type(action).__name__}")
        if space["type"] == "discrete":
            if tuple(action.shape) != lead:
                raise ValueError(f"prev_action must have shape {lead}, got {tuple(action.shape)}")
            a = F.one_hot(action.long(), space["n"]).to(dtype)
        elif space["type"] == "multidiscrete":
            nvec = space["nvec"]
            if tuple(action.shape) != (*lead, len(nvec)):
                raise ValueError(
                    f"prev_action must have shape {(*lead, len(nvec))}, got {tuple(action.shape)}"
                )
            a = torch.cat([F.one_hot(action[..., i].long(), v) for i, v in enumerate(nvec)], -1)
            a = a.to(dtype)
        else:
            want = (*lead, *space["shape"])
            if tuple(action.shape) != want:
                raise ValueError(f"prev_action must have shape {want}, got {tuple(action.shape)}")
            a = action.reshape(*lead, -1).to(dtype)
        return torch.cat([a, reward.to(dtype)[..., None], done.to(dtype)[..., None]], dim=-1)

    # -- the pieces after the embedding -----------------------------------------------------------
    def core(
        self, x: Tensor, state: PolicyState | None = None, resets: Tensor | None = None
    ) -> tuple[Tensor, PolicyState]:
        """The residual stack in sequence mode and the final norm: ``x (B, L, d_model)`` ->
        features ``(B, L, d_model)`` and the new state."""
        x, new_state = residual_forward(self.layers, self.norms, x, state, resets, self._spec.norm)
        return self.final_norm(x), new_state

    def core_step(
        self, x: Tensor, state: PolicyState | None, reset: Tensor | None = None
    ) -> tuple[Tensor, PolicyState]:
        """The residual stack in step mode and the final norm: ``x (B, d_model)`` -> features
        ``(B, d_model)`` and the new state."""
        x, new_state = residual_step(self.layers, self.norms, x, state, reset, self._spec.norm)
        return self.final_norm(x), new_state

    def heads(self, f: Tensor) -> PolicyOutput:
        """Actor and critic on features ``f (..., d_model)``."""
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
        resets = check_mask(resets, tuple(obs.shape[:2]), "resets")
        check_stack_state(state, self.n_layers)
        f, new_state = self.core(
            self.embed(obs, prev_action, prev_reward, prev_done), state, resets
        )
        return self.heads(f), new_state

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
        reset = check_mask(reset, (obs.shape[0],), "reset")
        check_stack_state(state, self.n_layers)
        f, new_state = self.core_step(
            self.embed(obs, prev_action, prev_reward, prev_done), state, reset
        )
        return self.heads(f), new_state

    # -- parameters -----------------------------------------------------------------------------
    def unconditioned_state_dict(self) -> dict[str, Tensor]:
        """The state dict of the equivalent policy *without* ``condition``: the constant columns
        of the first encoder layer are folded into its bias, ``W [o; c] + b = W_o o + (b + W_c
        c)``, so a policy that never sees the code acts like this one (used to initialise a task
        policy from a conditioned skill). A copy; the policy's own state dict when unconditioned.
        """
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        if self.condition is None:
            return sd
        n_cond = self.condition.numel()
        w, b = sd["encoder.net.0.weight"], sd["encoder.net.0.bias"]
        sd["encoder.net.0.weight"] = w[:, :-n_cond].clone()
        sd["encoder.net.0.bias"] = b + w[:, -n_cond:] @ self.condition.to(w.dtype)
        return sd

    # -- distributions ---------------------------------------------------------------------------
    def log_prob(self, out: PolicyOutput, action: Tensor) -> Tensor:
        return self.head.log_prob(out.dist_params, action)

    def entropy(self, out: PolicyOutput) -> Tensor:
        return self.head.entropy(out.dist_params)

    def sample(self, out: PolicyOutput, generator: torch.Generator | None = None) -> Tensor:
        return self.head.sample(out.dist_params, generator)

    def mode(self, out: PolicyOutput) -> Tensor:
        return self.head.mode(out.dist_params)
