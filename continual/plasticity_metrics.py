"""Plasticity metrics of a sequence policy, and the *units* they (and the remedies of
:mod:`continual.plasticity`) are defined on.

**Units.** A unit is one scalar activation with its own incoming weights (rows of the tensors
that produce it) and outgoing weights (columns of the Linear layers that read it). The unit
groups of a :class:`ssm.SequencePolicy` (:func:`policy_units`); for unit ``u``::

    group       kind    the unit (how many)            its activation (what is read)
    ----------  ------  -----------------------------  ---------------------------------------
    encoder.    vector  hidden unit of the encoder     tanh(net.0(o))
      hidden            MLP (encoder_hidden)
    encoder.    vector  encoder output unit (d_model)  tanh(net.2(·)) (image encoder:
      out       /image                                 relu(out(·)))
    layers.i    s4d     channel: one SISO SSM          GELU(y_u + D_u x_u), out_proj's input
    layers.i    s5      output channel (d_model)       GELU(y_u + D_u x_u), out_proj's input
    layers.i    mamba   inner channel (d_inner = E)    y_u · silu(z_u), out_proj's input
    layers.i    gru     hidden unit (d_model)          h_u, the layer's state and output
    layers.i    lstm    hidden unit (d_model)          h_u

    group       kind    incoming: u's rows of            outgoing: u's columns of
    ----------  ------  -------------------------------  -----------------------------------
    encoder.    vector  net.0.weight, net.0.bias         net.2.weight
      hidden
    encoder.    vector  net.2.weight, net.2.bias         in_proj.weight (its first d_model)
      out       /image  (image: out.weight, out.bias)
    layers.i    s4d     log_dt, A_re_log, A_im, C_re,    out_proj.weight
                        C_im, D
    layers.i    s5      C_re, C_im, D (Λ, B and Δ are    out_proj.weight
                        shared by all channels)
    layers.i    mamba   in_proj.weight (+ bias) rows u   out_proj.weight, x_proj.weight
                        and E+u (x and z), conv1d.weight,
                        conv1d.bias, dt_proj.weight,
                        dt_proj.bias, A_log, D
    layers.i    gru     weight_ih, weight_hh, bias_ih,   weight_hh, plus an identity write
                        bias_hh: rows u + gH, g = 0..2   into the residual stream
    layers.i    lstm    the same, g = 0..3               the same

Not units: the residual stream and its norms (every layer reads and writes it), the convolution
channels of the image encoder, and the actor and critic heads, which are linear read-outs of the
features with no hidden layer (reset them as modules, :class:`continual.plasticity.ResetModules`).
A GRU/LSTM unit's output is added to the residual stream without a weight, so "zero the outgoing
weights" can only zero its recurrent columns: a re-initialised GRU/LSTM unit changes the function
at once, unlike the other kinds.

**Activations** (:func:`probe_activations`) are read with forward hooks while the policy runs in
step mode over a few sequences of a trajectory (the iteration's batch), from its recorded
initial state, resets and in-context inputs; step mode because Mamba's sequence mode multiplies
by ``out_proj.weight`` directly (no module call to hook). It runs with autograd recording on
(the fused acting kernels, used only without it, bypass the hooked modules) and the state
detached at every step, so the cost is a few policy steps.

**Metrics** (the definitions of Plasticine, Dohare et al. 2024 and Sokar et al. 2023):

- unit score (ReDo, Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL"):
  ``s_u = E|h_u| / ((1/U) Σ_k E|h_k|)`` over the probe's samples, within the unit's group; the
  unit is *dormant* when ``s_u <= τ``. ``dormant_ratio``: dormant units / all units.
- ``active_fraction``: 1 − the fraction of *dead* units (Dohare et al. 2024, "Loss of plasticity
  in deep continual learning"), a unit being dead when ``|h_u| <= ε`` on every probe sample.
- effective rank (Roy & Vetterli 2007) of the feature matrix Φ (N × d: the final norm's output,
  the heads' input, over the probe's samples, uncentred): ``exp(−Σ p_i log p_i)``,
  ``p_i = σ_i / Σ_j σ_j``.
- ``stable_rank``: ``Σ σ_i² / max σ_i²`` (= ‖Φ‖_F² / ‖Φ‖_2²), and ``srank``: the srank-δ of
  Kumar et al. 2021 ("Implicit Under-Parameterization"), the smallest k with
  ``Σ_{i<=k} σ_i >= (1 − δ) Σ σ_i`` (σ sorted descending).
- ``weight_magnitude``: mean |θ| over all parameter entries; ``weight_change``:
  ``‖θ − θ_stage start‖ / ‖θ_stage start‖`` (relative L2, all parameters as one vector).
- ``grad_norm``: the L2 norm of the gradient the optimiser is handed (before clipping; after
  the masks of plugins listed earlier), averaged over the iteration's optimiser steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metarl.plugins import Plugin, StageEnd
from metarl.trajectory import Trajectory
from ssm.policy import ImageEncoder, SequencePolicy

__all__ = [
    "METRICS_SCHEMA_VERSION",
    "PlasticityMetrics",
    "Probe",
    "Slot",
    "UnitGroup",
    "active_fraction",
    "batch_trajectory",
    "dormant_mask",
    "effective_rank",
    "policy_units",
    "probe_activations",
    "relative_change",
    "select_groups",
    "srank",
    "stable_rank",
    "unit_scores",
    "weight_magnitude",
]

METRICS_SCHEMA_VERSION = 1


# -- units ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """Where a group's units sit in one parameter: unit ``u`` owns index ``offset + u`` along
    ``dim``."""

    param: str
    """the parameter's name in ``policy.named_parameters()``"""
    dim: int
    """the axis that indexes units (0: rows of a producer, 1: columns of a consumer)"""
    offset: int = 0
    """index of unit 0 along ``dim`` (gates of a GRU, the z half of Mamba's in_proj)"""


@dataclass(frozen=True)
class UnitGroup:
    """One group of units (a layer's): how to read them, and their weights."""

    name: str
    """the group's name (``encoder.hidden``, ``encoder.out``, ``layers.i``)"""
    size: int
    """number of units"""
    incoming: tuple[Slot, ...]
    """what produces each unit (re-initialised when a unit is reset)"""
    outgoing: tuple[Slot, ...]
    """what reads each unit (zeroed when a unit is reset)"""
    read: tuple[str, str | int]
    """``("output", module)``, ``("input", module)`` or ``("state", layer index)``"""
    identity_out: bool = False
    """the unit also writes into the residual stream with weight 1 (GRU, LSTM)"""


def _rows(param: str, size: int, blocks: int = 1) -> tuple[Slot, ...]:
    return tuple(Slot(param, 0, b * size) for b in range(blocks))


def _layer_units(i: int, layer: nn.Module, kind: str) -> UnitGroup:
    p = f"layers.{i}."
    if kind == "s4d":
        names = ("log_dt", "A_re_log", "A_im", "C_re", "C_im", "D")
        incoming = tuple(Slot(p + n, 0) for n in names)
        return UnitGroup(
            f"layers.{i}",
            layer.d_model,
            incoming,
            (Slot(p + "out_proj.weight", 1),),
            ("input", p + "out_proj"),
        )
    if kind == "s5":
        incoming = tuple(Slot(p + n, 0) for n in ("C_re", "C_im", "D"))
        return UnitGroup(
            f"layers.{i}",
            layer.d_model,
            incoming,
            (Slot(p + "out_proj.weight", 1),),
            ("input", p + "out_proj"),
        )
    if kind == "mamba":
        e = layer.d_inner
        incoming = [*_rows(p + "in_proj.weight", e, 2)]
        if layer.in_proj.bias is not None:
            incoming += _rows(p + "in_proj.bias", e, 2)
        incoming += [
            Slot(p + n, 0)
            for n in (
                "conv1d.weight",
                "conv1d.bias",
                "dt_proj.weight",
                "dt_proj.bias",
                "A_log",
                "D",
            )
        ]
        outgoing = (Slot(p + "out_proj.weight", 1), Slot(p + "x_proj.weight", 1))
        return UnitGroup(f"layers.{i}", e, tuple(incoming), outgoing, ("input", p + "out_proj"))
    if kind in ("gru", "lstm"):
        h, gates = layer.d_model, layer.gates
        incoming = tuple(
            s
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            for s in _rows(p + n, h, gates)
        )
        return UnitGroup(
            f"layers.{i}",
            h,
            incoming,
            (Slot(p + "weight_hh", 1),),
            ("state", i),
            identity_out=True,
        )
    raise ValueError(f"no unit definition for the layer kind {kind!r}")


def policy_units(policy: nn.Module) -> list[UnitGroup]:
    """The unit groups of a :class:`ssm.SequencePolicy` (the table in the module docstring)."""
    if not isinstance(policy, SequencePolicy):
        raise ValueError(
            f"plasticity units are defined for ssm.SequencePolicy, got {type(policy).__name__}"
        )
    groups: list[UnitGroup] = []
    d = policy.d_model
    if isinstance(policy.encoder, ImageEncoder):
        out_incoming = (Slot("encoder.out.weight", 0), Slot("encoder.out.bias", 0))
    else:
        hidden = policy.encoder.net[0].out_features
        groups.append(
            UnitGroup(
                "encoder.hidden",
                hidden,
                (Slot("encoder.net.0.weight", 0), Slot("encoder.net.0.bias", 0)),
                (Slot("encoder.net.2.weight", 1),),
                ("output", "encoder.net.1"),
            )
        )
        out_incoming = (Slot("encoder.net.2.weight", 0), Slot("encoder.net.2.bias", 0))
    groups.append(
        UnitGroup(
            "encoder.out", d, out_incoming, (Slot("in_proj.weight", 1),), ("output", "encoder")
        )
    )
    for i, layer in enumerate(policy.layers):
        groups.append(_layer_units(i, layer, policy.kind))
    return groups


def select_groups(groups: Sequence[UnitGroup], names: Sequence[str]) -> list[UnitGroup]:
    """The groups whose name is one of ``names`` or starts with ``name + "."`` (all when
    ``names`` is empty); a name that matches none is an error."""
    if not names:
        return list(groups)
    chosen = []
    for name in names:
        hit = [g for g in groups if g.name == name or g.name.startswith(name + ".")]
        if not hit:
            raise ValueError(f"no unit group {name!r}; the policy has {[g.name for g in groups]}")
        chosen += [g for g in hit if g not in chosen]
    return chosen


# -- activations ----------------------------------------------------------------------------------
@dataclass
class Probe:
    """Activations of a probe run."""

    activations: dict[str, Tensor]
    """group name -> ``(N, units)``"""
    features: Tensor
    """``(N, d_model)``: the final norm's output (the heads' input)"""


def batch_trajectory(batch: Any) -> Trajectory | None:
    """The trajectory in an iteration's batch: PPO's and RL²'s batch, a meta-learner's support
    data collected with θ (``MetaBatch.pre``); None if there is none."""
    if isinstance(batch, Trajectory):
        return batch
    pre = getattr(batch, "pre", None)
    return pre if isinstance(pre, Trajectory) else None


def _detach(state: Any) -> Any:
    return torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def probe_activations(
    policy: SequencePolicy,
    traj: Trajectory,
    groups: Sequence[UnitGroup] | None = None,
    sequences: int = 8,
    steps: int = 64,
) -> Probe:
    """Every group's activations and the features, over the first ``sequences`` sequences and
    ``steps`` steps of ``traj`` (the policy in step mode from the recorded initial state, resets
    and in-context inputs; see the module docstring). Returns ``N = sequences · steps`` rows."""
    if sequences < 1 or steps < 1:
        raise ValueError(f"sequences and steps must be >= 1, got {sequences} and {steps}")
    groups = policy_units(policy) if groups is None else list(groups)
    param = next(policy.parameters())
    sub = traj[list(range(min(sequences, traj.B)))].to(param.device)
    length = min(steps, sub.T)
    modules = dict(policy.named_modules())
    collected: dict[str, list[Tensor]] = {g.name: [] for g in groups}
    features: list[Tensor] = []
    hooks = []

    def keep(name: str):
        def hook(_module, args, output=None):
            value = args[0] if output is None else output
            collected[name].append(value.detach())

        return hook

    try:
        for g in groups:
            how, where = g.read
            if how == "output":
                hooks.append(modules[where].register_forward_hook(keep(g.name)))
            elif how == "input":
                hooks.append(modules[where].register_forward_pre_hook(keep(g.name)))
        hooks.append(
            modules["final_norm"].register_forward_hook(
                lambda _m, _a, out: features.append(out.detach())
            )
        )
        state = _detach(sub.initial_state)
        with torch.enable_grad():  # the reference step path, whose submodules the hooks see
            for t in range(length):
                kwargs = {}
                if policy.in_context:
                    kwargs = dict(
                        prev_action=sub.prev_actions[t],
                        prev_reward=sub.prev_rewards[t],
                        prev_done=sub.prev_dones[t],
                    )
                _, state = policy.step(sub.obs[t], state, reset=sub.resets[t], **kwargs)
                state = _detach(state)
                for g in groups:
                    if g.read[0] == "state":
                        collected[g.name].append(state[int(g.read[1])][0])
    finally:
        for h in hooks:
            h.remove()
    acts = {name: torch.cat(v, 0).reshape(-1, v[0].shape[-1]) for name, v in collected.items()}
    return Probe(acts, torch.cat(features, 0).reshape(-1, features[0].shape[-1]))


# -- the metrics ----------------------------------------------------------------------------------
def unit_scores(activations: Tensor) -> Tensor:
    """ReDo's unit scores ``s_u = E|h_u| / ((1/U) Σ_k E|h_k|)`` of ``activations (N, U)``
    (all zero when every activation is)."""
    if activations.dim() != 2:
        raise ValueError(f"activations must be (N, units), got shape {tuple(activations.shape)}")
    mean_abs = activations.abs().double().mean(0)
    denom = mean_abs.mean()
    return mean_abs / denom if denom > 0 else torch.zeros_like(mean_abs)


def dormant_mask(activations: Tensor, tau: float) -> Tensor:
    """``(U,)`` bool: the units whose ReDo score is ``<= tau``."""
    return unit_scores(activations) <= tau


def active_fraction(activations: Tensor, eps: float = 1e-6) -> float:
    """The share of units with ``|h| > eps`` on at least one sample (1 − the dead fraction)."""
    return float((activations.abs() > eps).any(0).double().mean())


def _singular_values(features: Tensor) -> Tensor:
    if features.dim() != 2:
        raise ValueError(f"features must be a matrix (N, d), got shape {tuple(features.shape)}")
    return torch.linalg.svdvals(features.detach().double())


def effective_rank(features: Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(−Σ p_i log p_i)``, ``p = σ / Σσ`` (0 for a zero
    matrix)."""
    s = _singular_values(features)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(features: Tensor) -> float:
    """``Σ σ_i² / max σ_i²`` (0 for a zero matrix)."""
    s = _singular_values(features)
    return float((s**2).sum() / s.max() ** 2) if s.numel() and s.max() > 0 else 0.0


def srank(features: Tensor, delta: float = 0.01) -> int:
    """Kumar et al.'s srank-δ: the smallest k with ``Σ_{i<=k} σ_i >= (1 − δ) Σ σ_i`` (0 for a
    zero matrix)."""
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    s = _singular_values(features)
    total = s.sum()
    if total <= 0:
        return 0
    cum = torch.cumsum(s, 0) / total
    # a small tolerance: rounding must not push an exact (1 − δ) share one index further
    return int((cum < (1.0 - delta) - 1e-12).sum()) + 1


def weight_magnitude(params: Mapping[str, Tensor]) -> float:
    """Mean |θ| over every entry of every parameter."""
    total = sum(float(p.detach().abs().double().sum()) for p in params.values())
    count = sum(p.numel() for p in params.values())
    return total / max(count, 1)


def relative_change(params: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """``‖θ − θ_ref‖ / ‖θ_ref‖`` with all parameters (the names of ``reference``) as one
    vector."""
    diff = ref = 0.0
    for name, r in reference.items():
        p = params[name].detach().double()
        r = r.to(p.device).double()
        diff += float(((p - r) ** 2).sum())
        ref += float((r**2).sum())
    return math.sqrt(diff) / math.sqrt(ref) if ref > 0 else math.sqrt(diff)


# -- the plugin -----------------------------------------------------------------------------------
class PlasticityMetrics(Plugin):
    """Logs the plasticity metrics (module docstring) into the iteration's row as
    ``plasticity/<metric>`` (and ``plasticity/dormant_ratio/<group>``) every ``every``
    iterations, and on the last iteration of a stage of known length; keeps per-stage means and
    last values (:meth:`summary`).

    Put it after the remedies in a plugin list: its stage-start snapshot (for
    ``weight_change``) is taken in ``end_stage``, after theirs have acted.
    """

    name = "plasticity_metrics"

    def __init__(
        self,
        policy: SequencePolicy,
        every: int = 10,
        probe_sequences: int = 8,
        probe_steps: int = 64,
        tau: float = 0.1,
        dead_eps: float = 1e-6,
        srank_delta: float = 0.01,
    ):
        if every < 1 or probe_sequences < 1 or probe_steps < 1:
            raise ValueError("every, probe_sequences and probe_steps must be >= 1")
        if tau < 0 or dead_eps < 0 or not 0.0 <= srank_delta < 1.0:
            raise ValueError("tau and dead_eps must be >= 0 and srank_delta in [0, 1)")
        self.policy, self.every = policy, every
        self.probe_sequences, self.probe_steps = probe_sequences, probe_steps
        self.tau, self.dead_eps, self.srank_delta = tau, dead_eps, srank_delta
        self.groups = policy_units(policy)
        self.stage_start = self._snapshot()
        self.stage = 0
        self.iterations = 0  # iterations seen
        self.stages: list[dict[str, Any]] = []  # per stage: count, sums, last
        self._last_of_stage = False
        self._grad_norms: list[float] = []

    def _snapshot(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.policy.named_parameters()}

    def _due(self) -> bool:
        """Whether the iteration in progress is measured."""
        return (self.iterations + 1) % self.every == 0 or self._last_of_stage

    # -- hooks ----------------------------------------------------------------------------------
    def stage_progress(self, stage_iteration: int, stage_iterations: int, params) -> None:
        self._last_of_stage = stage_iteration == stage_iterations - 1

    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self._due():
            sq = sum(float(g.detach().double().pow(2).sum()) for g in grads.values())
            self._grad_norms.append(math.sqrt(sq))
        return dict(grads)

    def after_iteration(self, batch: Any, row: dict[str, Any]) -> None:
        due = self._due()
        self.iterations += 1
        self._last_of_stage = False
        grad_norms, self._grad_norms = self._grad_norms, []
        traj = batch_trajectory(batch)
        if not due or traj is None:
            return
        values = self.measure(traj)
        values["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        row.update({f"plasticity/{k}": v for k, v in values.items()})
        self._record(values)

    def end_stage(self, end: StageEnd) -> None:
        self.stage = end.stage + 1
        self.stage_start = self._snapshot()

    # -- measuring ------------------------------------------------------------------------------
    def measure(self, traj: Trajectory) -> dict[str, float]:
        """The metrics on a probe of ``traj`` and the current parameters (no grad_norm)."""
        probe = probe_activations(
            self.policy, traj, self.groups, self.probe_sequences, self.probe_steps
        )
        out: dict[str, float] = {}
        dormant = units = 0
        alive = 0.0
        for g in self.groups:
            mask = dormant_mask(probe.activations[g.name], self.tau)
            out[f"dormant_ratio/{g.name}"] = float(mask.double().mean())
            dormant += int(mask.sum())
            units += g.size
            alive += active_fraction(probe.activations[g.name], self.dead_eps) * g.size
        out["dormant_ratio"] = dormant / units
        out["active_fraction"] = alive / units
        out["effective_rank"] = effective_rank(probe.features)
        out["stable_rank"] = stable_rank(probe.features)
        out["srank"] = float(srank(probe.features, self.srank_delta))
        params = dict(self.policy.named_parameters())
        out["weight_magnitude"] = weight_magnitude(params)
        out["weight_change"] = relative_change(params, self.stage_start)
        return out

    def _record(self, values: dict[str, float]) -> None:
        while len(self.stages) <= self.stage:
            self.stages.append({"stage": len(self.stages), "count": 0, "sums": {}, "last": {}})
        entry = self.stages[self.stage]
        entry["count"] += 1
        for k, v in values.items():
            if math.isfinite(v):
                entry["sums"][k] = entry["sums"].get(k, 0.0) + v
        entry["last"] = dict(values)
        entry["last_iteration"] = self.iterations

    def summary(self) -> list[dict[str, Any]]:
        """Per stage with a measurement: ``{"stage", "measured", "mean": {metric: ...},
        "last": {metric: ...}, "last_iteration"}`` (the mean over the stage's measured
        iterations, and the last measurement)."""
        return [
            {
                "stage": e["stage"],
                "measured": e["count"],
                "mean": {k: v / e["count"] for k, v in e["sums"].items()},
                "last": dict(e["last"]),
                "last_iteration": e.get("last_iteration"),
            }
            for e in self.stages
            if e["count"]
        ]

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "schema_version": METRICS_SCHEMA_VERSION,
            "stage_start": {n: t.clone() for n, t in self.stage_start.items()},
            "stage": self.stage,
            "iterations": self.iterations,
            "stages": [
                {**e, "sums": dict(e["sums"]), "last": dict(e["last"])} for e in self.stages
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.name or state.get("schema_version") != METRICS_SCHEMA_VERSION:
            raise ValueError(
                f"expected a {self.name!r} state of schema_version {METRICS_SCHEMA_VERSION}, got "
                f"{state.get('kind')!r} version {state.get('schema_version')!r}"
            )
        mine = dict(self.policy.named_parameters())
        if set(state["stage_start"]) != set(mine):
            raise ValueError("the plasticity-metrics state is for a policy with other parameters")
        self.stage_start = {
            n: t.clone().to(mine[n].device) for n, t in state["stage_start"].items()
        }
        self.stage, self.iterations = int(state["stage"]), int(state["iterations"])
        self.stages = [
            {**e, "sums": dict(e["sums"]), "last": dict(e["last"])} for e in state["stages"]
        ]
