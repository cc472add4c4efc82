"""The fused CPU step of a whole :class:`~ssm.policy.SequencePolicy` (or of one sequence layer),
for acting: one C++ call per environment step (``ssm/csrc/policy_step.cpp``).

    e = enc(o ⊕ c) [⊕ a_{t-1}, r_{t-1}, d_{t-1}];   x = W_in e
    x ← x + layer_i(norm_i(x))   for each layer;      f = norm(x)
    (or the policy's other norm placement: x ← norm_i(x + layer_i(x)), or no norms)
    π = head(f),   V = w_v · f

the arithmetic of :meth:`SequencePolicy.step` (the reference, and the source of truth: the tests
compare the two over sequences with resets). A step of a 2-layer d_model=64 policy is a few
MFLOP, but ~100 torch ops; their dispatch, not the arithmetic, is what an acting step costs, and
one call removes it.

::

    fast = FusedPolicyStep(policy)
    with torch.inference_mode():
        out, state = fast.step(obs, state, reset)      # == policy.step(obs, state, reset)
        out, state = fast.step_(obs, state, reset)     # the same, the state updated in place

Supported: layer kinds ``s4d``, ``s5``, ``mamba``, ``gru``, ``lstm``; vector (Box) and Discrete
observations, a condition, in-context inputs; categorical, multi-discrete and (tanh-)Gaussian
heads; float32 and float64 on CPU. Everything else, and every call with autograd recording, inside
a ``torch.func`` transform, with inputs of other shapes or dtypes, or where the extension cannot
be built, runs ``policy.step`` itself (said once in the ``ssm`` log).

Parameters are read from the module's own tensors at every step (no copy). What is derived from
them (the S4D/S5 discretisation, Mamba's ``A = -exp(A_log)``) is recomputed when a parameter's
version counter or storage changes, so an optimiser step, ``load_state_dict`` or ``.double()`` is
seen without a call. Replacing a parameter *object* (``load_state_dict(assign=True)``, assigning a
new ``nn.Parameter``) is not: call :meth:`refresh` after it.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import backend as _backend
from .base import SequenceLayer
from .heads import CategoricalHead, GaussianHead, MultiDiscreteHead
from .lti import S4D, S5
from .mamba import Mamba
from .policy import PolicyOutput, PolicyState, SequencePolicy, VectorEncoder
from .rnn import GRU, LSTM

__all__ = ["FusedLayerStep", "FusedPolicyStep", "FUSED_KINDS"]

FUSED_KINDS = ("s4d", "s5", "mamba", "gru", "lstm")
_KIND_OF = {S4D: "s4d", S5: "s5", Mamba: "mamba", GRU: "gru", LSTM: "lstm"}


def _layer_config(layer: nn.Module) -> dict[str, Any]:
    """The hyper-parameters the kernel needs for ``layer``; raises ``ValueError`` for a layer it
    does not fuse."""
    kind = _KIND_OF.get(type(layer))
    if kind is None:
        raise ValueError(f"no fused step for {type(layer).__name__} (fused: {FUSED_KINDS})")
    cfg: dict[str, Any] = {"kind": kind, "d_model": layer.d_model}
    if kind == "mamba":
        cfg.update(
            d_inner=layer.d_inner, d_state=layer.d_state, d_conv=layer.d_conv, dt_rank=layer.dt_rank
        )
    elif kind in ("s4d", "s5"):
        cfg["modes"] = layer.d_state // 2
    return cfg


def _check_params(params: dict[str, Tensor]) -> None:
    dtypes = {p.dtype for p in params.values()}
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64):
        raise ValueError("the fused step takes float32 or float64 parameters of one dtype")
    if any(p.device.type != "cpu" or not p.is_contiguous() for p in params.values()):
        raise ValueError("the fused step takes contiguous CPU parameters")


class _Fused(abc.ABC):
    """What the policy and layer wrappers share: building the C++ stepper, the fallback."""

    _what = "step"

    def __init__(self, module: nn.Module):
        self.module = module
        self._impl: Any = None
        self.unsupported: str | None = None
        self.refresh()

    @abc.abstractmethod
    def _build(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The C++ stepper's config and the tensors it reads (each wrapper describes its own)."""

    def refresh(self) -> None:
        """Re-read the module: its parameter objects and its structure (after parameters were
        replaced; in-place changes to their values are seen without this)."""
        self._impl, self.unsupported = None, None
        try:
            cfg, params = self._build()
            _check_params(params)
        except ValueError as e:
            self.unsupported = str(e)
            return
        ext = _backend.policy_step_ext()
        if ext is None:
            self.unsupported = "the fused step extension is not available"
            return
        if any(p.is_inference() for p in params.values()):
            _backend.log_once(
                "fast-step-inference-params",
                "ssm: the module's parameters are inference tensors (built under "
                "torch.inference_mode): they carry no version counter, so the fused step "
                "re-derives the S4D/S5 discretisation every call; build modules outside it",
                logging.WARNING,
            )
        with torch.no_grad():
            self._impl = ext.Stepper(cfg, params)

    @property
    def fused(self) -> bool:
        """Whether steps (with the right inputs, outside autograd) run fused."""
        return self._impl is not None

    def _fused_call(self, x, state, reset, ctx, inplace: bool):
        """The kernel's ``(out, value, state)``, or None where the reference must run."""
        impl = self._impl
        if impl is None:
            _backend.log_once(
                f"fast-step-unsupported-{id(self)}",
                f"ssm: fused {self._what} not used ({self.unsupported}); stepping the module",
            )
            return None
        if torch.is_grad_enabled() or _backend.functorch_active():
            _backend.log_once(
                "fast-step-grad",
                f"ssm: fused {self._what} skipped under autograd or a torch.func transform "
                "(it records no graph); stepping the module",
            )
            return None
        r = impl.step(x, state, reset, *ctx, inplace)
        if r is None and impl.refresh_if_stale() == 1:  # parameters changed dtype or layout
            self.refresh()
            if self._impl is None:
                return None
            r = self._impl.step(x, state, reset, *ctx, inplace)
        if r is None:
            _backend.log_once(
                f"fast-step-inputs-{self._what}",
                f"ssm: fused {self._what} got inputs it does not take (shape, dtype, device or "
                "state layout); stepping the module for those calls",
            )
        return r


class FusedPolicyStep(_Fused):
    """``step(obs, state, reset, prev_action, prev_reward, prev_done)`` of ``policy`` as one fused
    C++ call, equal to :meth:`SequencePolicy.step` to float rounding (see the module docstring).

    ``step`` returns a new state and leaves the one passed in untouched, as ``policy.step``;
    ``step_`` writes the new state over the one passed in (no allocation of the state; its
    tensors' version counters are bumped) and returns that same tuple.
    """

    _what = "policy step"

    def __init__(self, policy: SequencePolicy):
        if not isinstance(policy, SequencePolicy):
            raise ValueError(
                f"FusedPolicyStep needs an ssm.SequencePolicy, got {type(policy).__name__}"
            )
        self.policy = policy
        super().__init__(policy)

    def _build(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        p = self.policy
        spec = p._spec
        cfg = _layer_config(p.layers[0])
        if any(type(layer) is not type(p.layers[0]) for layer in p.layers):
            raise ValueError("the fused step needs one layer kind throughout the stack")
        if not isinstance(p.encoder, VectorEncoder) or not _is_tanh_mlp(p.encoder.net):
            raise ValueError("the fused step takes the vector (tanh MLP) encoder only")
        obs = spec.observation
        discrete = obs["type"] == "discrete"
        head = p.head
        if isinstance(head, GaussianHead):
            head_kind, groups = "gaussian", [head.dim]
        elif isinstance(head, CategoricalHead):
            head_kind, groups = "categorical", [head.n]
        elif isinstance(head, MultiDiscreteHead):
            head_kind, groups = "categorical", list(head.nvec)
        else:
            raise ValueError(f"no fused step for the head {type(head).__name__}")
        action = spec.action
        cfg.update(
            mode="policy",
            layer_prefixes=[f"layers.{i}." for i in range(p.n_layers)],
            placement=getattr(spec, "norm", "pre"),
            norm_eps=[float(getattr(n, "eps", 1e-5)) for n in p.norms],
            final_eps=float(getattr(p.final_norm, "eps", 1e-5)),
            obs="discrete" if discrete else "vector",
            d_obs=int(obs["n"]) if discrete else int(np.prod(p.obs_shape)),
            encoder_hidden=p.encoder.net[0].out_features,
            head=head_kind,
            head_groups=groups,
            in_context=bool(p.in_context),
            ctx_action=action["type"],
            ctx_nvec=(
                [int(action["n"])]
                if action["type"] == "discrete"
                else [int(n) for n in action.get("nvec", [])]
            ),
            ctx_dim=int(p.prev_action_dim),
        )
        params = dict(p.named_parameters())
        if p.condition is not None:
            params["condition"] = p.condition.to(next(iter(params.values())).dtype)
        return cfg, params

    def step(
        self,
        obs: Tensor,
        state: PolicyState | None,
        reset: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, PolicyState]:
        """:meth:`SequencePolicy.step`, fused: a new state; ``state`` is left as it was."""
        return self._run(obs, state, reset, (prev_action, prev_reward, prev_done), False)[:2]

    def step_(
        self,
        obs: Tensor,
        state: PolicyState,
        reset: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, PolicyState]:
        """:meth:`step` with the new state written over ``state``'s tensors (returned). Where the
        step is not fused, the reference's new state is copied into them, so the contract holds
        either way."""
        if state is None:
            raise ValueError("step_ needs a state to update in place (see policy.initial_state)")
        out, new, fused = self._run(obs, state, reset, (prev_action, prev_reward, prev_done), True)
        if not fused:
            with torch.no_grad():
                for old_layer, new_layer in zip(state, new):
                    for o, n in zip(old_layer, new_layer):
                        o.copy_(n)
        return out, state

    def _run(self, obs, state, reset, ctx, inplace: bool):
        if state is None and isinstance(obs, Tensor) and obs.dim() >= 1 and obs.shape[0] > 0:
            p = next(self.policy.parameters())
            state = self.policy.initial_state(obs.shape[0], p.device, p.dtype)
        r = self._fused_call(obs, state, reset, ctx, inplace)
        if r is None:
            return (*self.policy.step(obs, state, reset, *ctx), False)
        return PolicyOutput(r[0], r[1]), r[2], True


class FusedLayerStep(_Fused):
    """``layer.step(x, state, reset)`` of one S4D, S5, Mamba, GRU or LSTM layer as one fused C++
    call (for benchmarks and for code that steps a bare layer). ``step_`` updates in place."""

    _what = "layer step"

    def __init__(self, layer: SequenceLayer):
        super().__init__(layer)

    def _build(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        cfg = _layer_config(self.module)
        cfg.update(mode="layer", layer_prefixes=[""], norm_eps=[1e-5])
        return cfg, dict(self.module.named_parameters())

    def step(self, x: Tensor, state, reset: Tensor | None = None):
        """``layer.step(x, state, reset)``, fused."""
        return self._run(x, state, reset, False)

    def step_(self, x: Tensor, state, reset: Tensor | None = None):
        """:meth:`step`, the state updated in place (the fused path only; else a new state)."""
        return self._run(x, state, reset, True)

    def _run(self, x, state, reset, inplace: bool):
        r = None
        if state is not None:
            r = self._fused_call(x, (state,), reset, (None, None, None), inplace)
        if r is None:
            return self.module.step(x, state, reset)
        return r[0], r[2][0]


def _is_tanh_mlp(net: nn.Module) -> bool:
    kinds = [type(m) for m in net]
    return kinds == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh]
