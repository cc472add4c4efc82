"""``SkillNetwork``: :class:`ssm.SequencePolicy` rebuilt from an :class:`ArchSpec`, no gymnasium.

The skill runtime must import with torch, numpy and safetensors only, and ``ssm.SequencePolicy``
takes gymnasium spaces. So this module rebuilds the same network from the JSON spec: the same
sub-module names (``encoder.net.0``, ``in_proj``, ``layers.i``, ``norms.i``, ``final_norm``,
``head``, ``value``), so a ``SequencePolicy`` state dict loads into it strictly and back, and the
same computation, so it acts identically (``tests/test_skills_network.py`` pins both, for every
layer kind and space type)::

    e_t = enc([o_t ⊕ c]) [⊕ onehot(a_{t-1}), r_{t-1}, d_{t-1}]      (c: the spec's condition)
    x_t = W_in e_t;   x ← x + layer_i(norm_i(x));   π = head(norm(x)),  V = w_v · norm(x)

The sequence layers and heads come from ``ssm`` itself (:func:`ssm.make_layer`, ``ssm.heads``);
only the two small encoders and the wiring are restated here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SkillLibraryError
from .spec import ArchSpec, is_image

LayerStates = tuple[tuple[Tensor, ...], ...]


# the layers need no gymnasium: ssm imports SequencePolicy (and gymnasium) lazily
from ssm import base as _base  # noqa: E402
from ssm import heads as _heads  # noqa: E402
from ssm import registry as _registry  # noqa: E402


class NetworkOutput(NamedTuple):
    """As ``ssm.PolicyOutput``: the action head's parameters and the critic's value."""

    dist_params: Tensor
    value: Tensor


class _VectorEncoder(nn.Module):
    """``ssm.policy.VectorEncoder``: a two-layer tanh MLP."""

    def __init__(self, d_in: int, d_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out), nn.Tanh()
        )

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


class _ImageEncoder(nn.Module):
    """``ssm.policy.ImageEncoder``: the small CNN for uint8 ``(H, W, C)`` frames."""

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


def _make_head(action: dict[str, Any], d_in: int, box_head: str) -> nn.Module:
    if action["type"] == "discrete":
        return _heads.CategoricalHead(d_in, action["n"])
    if action["type"] == "multidiscrete":
        return _heads.MultiDiscreteHead(d_in, action["nvec"])
    shape = tuple(action["shape"])
    low = np.asarray(action["low"], dtype=np.float32).reshape(shape)
    high = np.asarray(action["high"], dtype=np.float32).reshape(shape)
    return _heads.GaussianHead(d_in, low, high, squash=box_head == "tanh")


def _prev_action_dim(action: dict[str, Any]) -> int:
    if action["type"] == "discrete":
        return action["n"]
    if action["type"] == "multidiscrete":
        return sum(action["nvec"])
    return int(np.prod(action["shape"]))


class SkillNetwork(nn.Module):
    """The actor-critic of a skill, built from ``spec`` (random initial parameters; load a
    state dict). Offers the policy API the rollout engine uses: ``initial_state``, ``forward``,
    ``step``, ``log_prob``, ``entropy``, ``sample``, ``mode``."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.kind, self.d_model, self.n_layers = spec.kind, spec.d_model, spec.n_layers
        self.in_context = spec.in_context
        self.obs_shape = spec.obs_shape
        obs = spec.observation
        self.image = is_image(obs)
        self.discrete_obs = obs["type"] == "discrete"
        n_cond = len(spec.condition)
        if self.image:
            self.encoder: nn.Module = _ImageEncoder(tuple(obs["shape"]), spec.d_model)
        else:
            d_in = obs["n"] if self.discrete_obs else int(np.prod(obs["shape"]))
            self.encoder = _VectorEncoder(d_in + n_cond, spec.d_model, spec.encoder_hidden)
        # a buffer, so it follows .to(device/dtype); not persistent: it is part of the spec
        self.register_buffer(
            "condition", torch.tensor(spec.condition, dtype=torch.float32), persistent=False
        )
        self.prev_action_dim = _prev_action_dim(spec.action) if spec.in_context else 0
        extra = self.prev_action_dim + 2 if spec.in_context else 0
        self.in_proj = nn.Linear(spec.d_model + extra, spec.d_model)
        self.layers = nn.ModuleList(
            _registry.make_layer(spec.kind, spec.d_model, **spec.layer_kwargs)
            for _ in range(spec.n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(spec.d_model) for _ in range(spec.n_layers))
        self.final_norm = nn.LayerNorm(spec.d_model)
        self.head = _make_head(spec.action, spec.d_model, spec.box_head)
        self.value = nn.Linear(spec.d_model, 1)
        self.to(getattr(torch, spec.dtype))

    # -- state ----------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device=None, dtype=None) -> LayerStates:
        return tuple(layer.initial_state(batch_size, device, dtype) for layer in self.layers)

    # -- encoding -------------------------------------------------------------------------------
    def _check_obs(self, obs: Tensor, lead: int) -> None:
        if not isinstance(obs, Tensor):
            raise ValueError(f"obs must be a torch.Tensor, got {type(obs).__name__}")
        want = ("(B, L" if lead == 2 else "(B") + "".join(f", {s}" for s in self.obs_shape) + ")"
        if obs.dim() != lead + len(self.obs_shape) or tuple(obs.shape[lead:]) != self.obs_shape:
            raise ValueError(f"obs must have shape {want}, got {tuple(obs.shape)}")
        if self.discrete_obs and (obs.is_floating_point() or obs.is_complex()):
            raise ValueError(f"Discrete obs must be an integer tensor, got {obs.dtype}")
        if not self.image and not self.discrete_obs:
            _base.check_floating(obs, "obs")

    def _encode(self, obs: Tensor, lead: tuple[int, ...], prev) -> Tensor:
        n = int(np.prod(lead))
        dtype = self.in_proj.weight.dtype
        if self.discrete_obs:
            flat = F.one_hot(obs.reshape(n).long(), self.spec.observation["n"]).to(dtype)
        elif self.image:
            flat = obs.reshape(n, *self.obs_shape)
        else:
            flat = obs.reshape(n, -1)
        if self.condition.numel():
            cond = self.condition.to(flat.dtype).expand(n, -1)
            flat = torch.cat([flat, cond], dim=-1)
        e = self.encoder(flat).reshape(*lead, -1)
        if self.in_context:
            e = torch.cat([e, self._context(prev, lead, e.dtype)], dim=-1)
        return self.in_proj(e)

    def _context(self, prev, lead: tuple[int, ...], dtype) -> Tensor:
        action, reward, done = prev
        if action is None or reward is None or done is None:
            raise ValueError("an in_context network needs prev_action, prev_reward and prev_done")
        for name, t in (("prev_reward", reward), ("prev_done", done)):
            if not isinstance(t, Tensor) or tuple(t.shape) != lead:
                raise ValueError(f"{name} must be a tensor of shape {lead}")
        space = self.spec.action
        if space["type"] == "discrete":
            a = F.one_hot(action.long(), space["n"]).to(dtype)
        elif space["type"] == "multidiscrete":
            a = torch.cat(
                [F.one_hot(action[..., i].long(), v) for i, v in enumerate(space["nvec"])], -1
            )
            a = a.to(dtype)
        else:
            a = action.reshape(*lead, -1).to(dtype)
        if tuple(a.shape) != (*lead, self.prev_action_dim):
            raise ValueError(f"prev_action has the wrong shape {tuple(action.shape)}")
        return torch.cat([a, reward.to(dtype)[..., None], done.to(dtype)[..., None]], dim=-1)

    def _heads(self, x: Tensor) -> NetworkOutput:
        f = self.final_norm(x)
        return NetworkOutput(self.head(f), self.value(f).squeeze(-1))

    # -- the contract ---------------------------------------------------------------------------
    def forward(
        self,
        obs: Tensor,
        state: LayerStates | None = None,
        resets: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[NetworkOutput, LayerStates]:
        """Sequence mode: ``obs (B, L, *obs_shape)`` -> outputs with leading ``(B, L)``."""
        self._check_obs(obs, 2)
        lead = tuple(obs.shape[:2])
        resets = _base.check_mask(resets, lead, "resets")
        self._check_state(state)
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
        state: LayerStates | None,
        reset: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[NetworkOutput, LayerStates]:
        """Recurrent mode: ``obs (B, *obs_shape)`` -> outputs with leading ``(B,)``."""
        self._check_obs(obs, 1)
        lead = (obs.shape[0],)
        reset = _base.check_mask(reset, lead, "reset")
        self._check_state(state)
        x = self._encode(obs, lead, (prev_action, prev_reward, prev_done))
        new_state = []
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            s = None if state is None else _base.zero_where(state[i], reset)
            y, s = layer.step(norm(x), s)
            x = x + y
            new_state.append(s)
        return self._heads(x), tuple(new_state)

    def _check_state(self, state) -> None:
        if state is not None and (
            not isinstance(state, (tuple, list)) or len(state) != self.n_layers
        ):
            raise ValueError(
                f"the network state must be a tuple of {self.n_layers} layer states "
                "(see initial_state)"
            )

    # -- distributions ---------------------------------------------------------------------------
    def log_prob(self, out: NetworkOutput, action: Tensor) -> Tensor:
        return self.head.log_prob(out.dist_params, action)

    def entropy(self, out: NetworkOutput) -> Tensor:
        return self.head.entropy(out.dist_params)

    def sample(self, out: NetworkOutput, generator: torch.Generator | None = None) -> Tensor:
        return self.head.sample(out.dist_params, generator)

    def mode(self, out: NetworkOutput) -> Tensor:
        return self.head.mode(out.dist_params)

    # -- parameters -----------------------------------------------------------------------------
    def unconditioned_state_dict(self) -> dict[str, Tensor]:
        """The state dict of the equivalent network *without* ``condition``: the constant
        columns of the first encoder layer are folded into its bias,
        ``W [o; c] + b = W_o o + (b + W_c c)``, so a policy that never sees the skill code acts
        like this skill (used to initialise a task policy from a skill)."""
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        n_cond = self.condition.numel()
        if n_cond == 0:
            return sd
        w, b = sd["encoder.net.0.weight"], sd["encoder.net.0.bias"]
        cond = self.condition.to(w.dtype)
        sd["encoder.net.0.weight"] = w[:, :-n_cond].clone()
        sd["encoder.net.0.bias"] = b + w[:, -n_cond:] @ cond
        return sd


MAX_PARAMETERS = 1 << 28
"""the largest network a spec may describe (2^28 parameters, 1 GiB in float32)"""


def parameter_shapes(spec: ArchSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The state-dict names, shapes and dtypes of ``spec``'s network, found by building it on
    the ``meta`` device (no memory, no RNG). Raises :class:`SkillLibraryError` for a spec that
    cannot be built or exceeds :data:`MAX_PARAMETERS`."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            net = SkillNetwork(spec)
    except Exception as e:  # any failure of a layer constructor on a (damaged) spec
        raise SkillLibraryError(
            f"cannot build a network from the spec: {type(e).__name__}: {e}"
        ) from None
    sd = net.state_dict()
    total = sum(v.numel() for v in sd.values())
    if total > MAX_PARAMETERS:
        raise SkillLibraryError(
            f"the spec describes {total:,} parameters, more than the limit of {MAX_PARAMETERS:,}"
        )
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def build_network(spec: ArchSpec) -> SkillNetwork:
    """``SkillNetwork(spec)``, checked first with :func:`parameter_shapes`, without touching the
    global RNG (the initial values are replaced when parameters are loaded, and a training run
    must not have its random stream shifted by loading a skill)."""
    parameter_shapes(spec)
    try:
        with torch.random.fork_rng(devices=[]):
            return SkillNetwork(spec)
    except Exception as e:
        raise SkillLibraryError(
            f"cannot build a network from the spec: {type(e).__name__}: {e}"
        ) from None
