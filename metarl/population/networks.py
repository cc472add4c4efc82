"""The population's networks: actors with an optional message channel, and the central critic.

An :class:`AgentNet` is an :class:`ssm.SequencePolicy` body, built from its spec and used through
its public pieces (``embed``, ``core``/``core_step``, ``heads``), so that a communication context
can enter the residual stream (a DIAL/CommNet-style differentiable channel, with attention as in
TarMAC)::

    e_t^j = W_in enc(o_t^j)                                  (o: own observation [⊕ one-hot id])
    m_t^i = W_msg f_t^i   (mode "prev": recurrent features)  or  W_msg e_t^i   (mode "same")
    c_t^j = Σ_i softmax_i(q_j · k_i / √d_k) m^i,   q_j = W_q e_t^j,  k_i = W_k m^i,
            over the readable senders i ≠ j that were alive when they spoke
    x_t^j = e_t^j + W_c c_t^j;   x ← x + layer_l(norm_l(x));   f_t^j = norm(x)
    π_j(·|·) = head(f_t^j),   V_j = w_v · f_t^j                (IPPO's own critic)

Mode "prev" reads ``m_{t-1}``; the coupling through time then needs step-by-step evaluation.
Mode "same" reads ``m_t``; messages depend on no recurrent state, so each agent's stack still runs
in parallel over time. A :class:`CentralCritic` (MAPPO, Yu et al. 2022) is a sequence model over
the joint observation ``[o^1 a^1, ..., o^N a^N, a]`` (``a``: alive flags) with one value per slot.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm.norm import LayerNorm
from ssm.policy import PolicyOutput, SequencePolicy, VectorEncoder
from ssm.spec import PolicySpec
from ssm.stack import make_stack, residual_forward, residual_step, stack_initial_state

__all__ = ["AgentNet", "CentralCritic", "attend_messages"]

_NEG = -1e9  # a finite "minus infinity": a fully masked row stays finite (and is zeroed)


def attend_messages(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Scaled dot-product attention of receivers over senders.

    ``q (..., S, d_k)``, ``k (..., N, d_k)``, ``v (..., N, d_v)``, ``mask (..., S, N)`` bool.
    A receiver with no readable sender gets a zero context (and zero gradients, never NaN).
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (..., S, N)
    weights = torch.softmax(scores.masked_fill(~mask, _NEG), dim=-1)
    weights = weights * mask.to(weights.dtype)
    return weights @ v  # (..., S, d_v)


class AgentNet(nn.Module):
    """One actor (see the module docstring).

    Args:
        obs_dim: observation size (including the one-hot id when ids are appended).
        n_actions: size of the categorical action space (the number of skills for an option
            agent).
        kind, d_model, n_layers, encoder_hidden, layer_kwargs: the ``SequencePolicy`` body.
        d_msg, d_key: message and attention sizes; ``d_msg=0`` builds no channel.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        kind: str = "gru",
        d_model: int = 32,
        n_layers: int = 1,
        encoder_hidden: int = 64,
        layer_kwargs: dict | None = None,
        d_msg: int = 0,
        d_key: int = 16,
    ):
        super().__init__()
        spec = PolicySpec(
            {"type": "box", "shape": [obs_dim]},
            {"type": "discrete", "n": n_actions},
            kind=kind,
            d_model=d_model,
            n_layers=n_layers,
            encoder_hidden=encoder_hidden,
            layer_kwargs=dict(layer_kwargs or {}),
            dtype=str(torch.get_default_dtype()).removeprefix("torch."),
        )
        self.body = SequencePolicy.from_spec(spec)
        self.obs_dim, self.n_actions, self.d_model, self.d_msg = obs_dim, n_actions, d_model, d_msg
        if d_msg > 0:
            self.msg = nn.Linear(d_model, d_msg)
            self.query = nn.Linear(d_model, d_key)
            self.key = nn.Linear(d_msg, d_key)
            self.read_out = nn.Linear(d_msg, d_model)

    @property
    def head(self):
        return self.body.head

    def initial_state(self, batch_size: int):
        p = next(self.body.parameters())
        return self.body.initial_state(batch_size, p.device, p.dtype)

    def embed(self, obs: Tensor) -> Tensor:
        """``e = W_in enc(o)`` for any leading axes: ``(..., obs_dim) -> (..., d_model)``."""
        return self.body.embed(obs)

    def message(self, h: Tensor) -> Tensor:
        """``m = W_msg h``: ``(..., d_model) -> (..., d_msg)``."""
        return self.msg(h)

    def read(self, e: Tensor, messages: Tensor, mask: Tensor) -> Tensor:
        """The context for receivers ``e (..., S, d_model)`` from ``messages (..., N, d_msg)``
        under ``mask (..., S, N)``, mapped into the residual stream: ``(..., S, d_model)``."""
        c = attend_messages(self.query(e), self.key(messages), messages, mask)
        return self.read_out(c)

    def core_step(self, x: Tensor, state) -> tuple[Tensor, tuple]:
        """The residual stack in step mode: ``x (R, d_model)`` -> features ``(R, d_model)``."""
        return self.body.core_step(x, state)

    def core_seq(self, x: Tensor) -> Tensor:
        """The residual stack in sequence mode from a zero state: ``(R, T, d) -> (R, T, d)``."""
        return self.body.core(x)[0]

    def heads(self, f: Tensor) -> PolicyOutput:
        return self.body.heads(f)

    def log_prob(self, dist_params: Tensor, action: Tensor) -> Tensor:
        return self.body.head.log_prob(dist_params, action)

    def entropy(self, dist_params: Tensor) -> Tensor:
        return self.body.head.entropy(dist_params)


class CentralCritic(nn.Module):
    """``V(joint observation history) -> (N,)`` values, one per slot (MAPPO's critic)."""

    def __init__(
        self,
        joint_dim: int,
        n_agents: int,
        kind: str = "gru",
        d_model: int = 64,
        n_layers: int = 1,
        encoder_hidden: int = 128,
        layer_kwargs: dict | None = None,
    ):
        super().__init__()
        self.joint_dim, self.n_agents = joint_dim, n_agents
        self.encoder = VectorEncoder(joint_dim, d_model, encoder_hidden)
        self.in_proj = nn.Linear(d_model, d_model)
        self.layers, self.norms = make_stack(kind, d_model, n_layers, layer_kwargs)
        self.final_norm = LayerNorm(d_model)
        self.value = nn.Linear(d_model, n_agents)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.zeros_(self.value.bias)

    def initial_state(self, batch_size: int):
        p = self.in_proj.weight
        return stack_initial_state(self.layers, batch_size, p.device, p.dtype)

    def forward(self, joint: Tensor) -> Tensor:
        """Sequence mode from a zero state: ``joint (B, T, J) -> values (B, T, N)``."""
        x, _ = residual_forward(self.layers, self.norms, self.in_proj(self.encoder(joint)))
        return self.value(self.final_norm(x))

    def step(self, joint: Tensor, state) -> tuple[Tensor, tuple]:
        """Step mode: ``joint (B, J) -> values (B, N)``."""
        x, new_state = residual_step(
            self.layers, self.norms, self.in_proj(self.encoder(joint)), state
        )
        return self.value(self.final_norm(x)), new_state


def joint_observation(obs: Tensor, alive: Tensor) -> Tensor:
    """The critic's input: ``[o^1 a^1, ..., o^N a^N, a]`` from ``obs (..., N, D)``, ``alive
    (..., N)``: ``(..., N·D + N)``."""
    a = alive.to(obs.dtype)
    return torch.cat([(obs * a[..., None]).flatten(-2), a], dim=-1)
