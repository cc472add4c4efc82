"""Plasticity remedies as trainer plugins (:mod:`metarl.plugins`), so PPO, RL² and the MAML
family take them alike. Units, their incoming and outgoing weights and the metrics are those of
:mod:`continual.plasticity_metrics`.

- :class:`ReDo` (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL"): every
  ``every`` iterations, the units whose score ``s_u = E|h_u| / mean_k E|h_k|`` on the
  iteration's batch is ``<= τ`` get fresh incoming weights and zero outgoing weights, and their
  optimiser moments are cleared.
- :class:`ContinualBackprop` (Dohare et al. 2024, "Loss of plasticity in deep continual
  learning"): after every iteration, each unit's contribution utility
  ``u ← η u + (1 − η) · E|h_u| · Σ_k |w_out,ku|`` and age ``a ← a + 1``; per group, ``ρ · (the
  number of units with a > m)`` is added to a running count, and its integer part of the
  eligible units (``a > m``) with the lowest utility are replaced (fresh incoming, zero
  outgoing, moments cleared, ``u = a = 0``). (The paper sums |w_out|; its code takes the mean,
  which ranks a group's units the same.) A GRU/LSTM unit's identity write into the residual
  stream counts as one more outgoing weight of magnitude 1.
- :class:`ShrinkPerturb` (Ash & Adams 2020, "On Warm-Starting Neural Network Training"): at
  every stage start (after the ended stage was scored) ``θ ← λ θ + σ θ_fresh``, θ_fresh a
  freshly initialised policy's parameters.
  With ``λ + σ = 1`` a parameter whose initialisation is deterministic (norm gains, Mamba's
  ``A_log`` and ``D``) moves toward its initial value, not toward 0.
- :class:`ResetModules`: at every stage start the chosen modules (``head``, ``value``,
  ``layers.1``, ...) are re-initialised and their optimiser moments cleared.
- :class:`L2Init` (Kumar et al. 2023, "Maintaining Plasticity in Continual Learning via
  Regenerative Regularization"): the loss term ``c · Σ ‖θ − θ_0‖²``, θ_0 the initialisation.

"Fresh" parameters come from a new policy built from the same :class:`ssm.PolicySpec` with a
seed drawn from the plugin's own generator (seeded from the run's seed; in its ``state_dict``),
so a remedy re-initialises with the policy's own initialisation scheme and runs reproducibly.
Optimiser moments are cleared through ``optimizer()``, a callable returning the trainer's
current optimiser (the continual learner may replace it at a stage boundary): every state
tensor shaped like the parameter (Adam's ``exp_avg``, ``exp_avg_sq``; SGD's momentum) is zeroed
at the reset entries; a whole re-initialised parameter loses its state entirely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metarl.plugins import Plugin
from ssm.policy import SequencePolicy
from ssm.util import derive_seed

from .config import PlasticitySettings
from .plasticity_metrics import (
    PlasticityMetrics,
    UnitGroup,
    batch_trajectory,
    policy_units,
    probe_activations,
    select_groups,
    unit_scores,
)

__all__ = [
    "REMEDIES",
    "REMEDY_SCHEMA_VERSION",
    "ContinualBackprop",
    "L2Init",
    "ReDo",
    "ResetModules",
    "ShrinkPerturb",
    "fresh_parameters",
    "make_metrics",
    "make_remedy",
    "outgoing_magnitude",
    "reinit_units",
]

REMEDY_SCHEMA_VERSION = 1
REMEDIES = ("none", "cbp", "redo", "shrink_perturb", "reset", "l2_init")

OptimizerGetter = Callable[[], "torch.optim.Optimizer | None"]


# -- shared surgery -------------------------------------------------------------------------------
def fresh_parameters(policy: SequencePolicy, generator: torch.Generator) -> dict[str, Tensor]:
    """The parameters of a new policy built from ``policy.spec``, initialised under a seed drawn
    from ``generator`` (the global RNG is left as it was)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = SequencePolicy.from_spec(policy.spec)
    device = next(policy.parameters()).device
    return {n: p.detach().to(device) for n, p in fresh.named_parameters()}


def _clear_moments(
    optimizer: torch.optim.Optimizer | None, param: Tensor, dim: int, index: Tensor
) -> None:
    state = None if optimizer is None else optimizer.state.get(param)
    for value in (state or {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.index_fill_(dim, index.to(value.device), 0.0)


def reinit_units(
    policy: nn.Module,
    group: UnitGroup,
    units: Tensor,
    fresh: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Units ``units`` (indices) of ``group``: incoming weights ← ``fresh``'s, outgoing weights
    ← 0, and (with an optimiser) their optimiser moments ← 0, in place."""
    if units.numel() == 0:
        return
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for slot in group.incoming:
            p = params[slot.param]
            index = (units + slot.offset).to(p.device)
            p.index_copy_(slot.dim, index, fresh[slot.param].index_select(slot.dim, index))
            _clear_moments(optimizer, p, slot.dim, index)
        for slot in group.outgoing:
            p = params[slot.param]
            index = (units + slot.offset).to(p.device)
            p.index_fill_(slot.dim, index, 0.0)
            _clear_moments(optimizer, p, slot.dim, index)


def outgoing_magnitude(params: Mapping[str, Tensor], group: UnitGroup) -> Tensor:
    """``(units,)``: ``Σ_k |w_out,ku|`` over every outgoing weight of each unit (+1 for an
    identity write into the residual stream)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for slot in group.outgoing:
        w = params[slot.param].detach().abs().double().transpose(0, slot.dim)
        per_index = w.reshape(w.shape[0], -1).sum(1)
        total += per_index.narrow(0, slot.offset, group.size).cpu()
    return total + 1.0 if group.identity_out else total


def _check_state(state: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    if not isinstance(state, Mapping) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"expected a {kind!r} remedy state, got {got!r}")
    if state.get("schema_version") != REMEDY_SCHEMA_VERSION:
        raise ValueError(
            f"{kind} state schema_version {state.get('schema_version')} is not supported "
            f"(this code reads {REMEDY_SCHEMA_VERSION})"
        )
    return state


class _Remedy(Plugin):
    """The policy, a generator for fresh initialisations and an optimiser getter."""

    def __init__(self, policy: SequencePolicy, seed: int, optimizer: OptimizerGetter | None = None):
        if not isinstance(policy, SequencePolicy):
            raise ValueError(
                f"the plasticity remedies act on an ssm.SequencePolicy, got {type(policy).__name__}"
            )
        self.policy = policy
        self.generator = torch.Generator().manual_seed(int(seed))
        self.optimizer_getter = optimizer
        self.applied = 0  # units replaced / times applied

    def optimizer(self) -> torch.optim.Optimizer | None:
        return None if self.optimizer_getter is None else self.optimizer_getter()

    def _base_state(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "schema_version": REMEDY_SCHEMA_VERSION,
            "generator": self.generator.get_state(),
            "applied": self.applied,
        }

    def _load_base(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        state = _check_state(state, self.name)
        self.generator.set_state(state["generator"])
        self.applied = int(state["applied"])
        return state

    def state_dict(self) -> dict[str, Any]:
        return self._base_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_base(state)


class _UnitRemedy(_Remedy):
    """A remedy on units: the chosen groups and the probe that reads them."""

    def __init__(
        self,
        policy: SequencePolicy,
        seed: int,
        optimizer: OptimizerGetter | None = None,
        groups: Sequence[str] = (),
        probe_sequences: int = 8,
        probe_steps: int = 64,
        reset_moments: bool = True,
    ):
        super().__init__(policy, seed, optimizer)
        if probe_sequences < 1 or probe_steps < 1:
            raise ValueError("probe_sequences and probe_steps must be >= 1")
        self.groups = select_groups(policy_units(policy), list(groups))
        self.probe_sequences, self.probe_steps = probe_sequences, probe_steps
        self.reset_moments = reset_moments

    def _probe(self, batch: Any):
        traj = batch_trajectory(batch)
        if traj is None:
            return None
        return probe_activations(
            self.policy, traj, self.groups, self.probe_sequences, self.probe_steps
        )

    def _reinit(self, group: UnitGroup, units: Tensor, fresh: Mapping[str, Tensor]) -> None:
        opt = self.optimizer() if self.reset_moments else None
        reinit_units(self.policy, group, units, fresh, opt)


# -- ReDo -----------------------------------------------------------------------------------------
class ReDo(_UnitRemedy):
    """Recycling dormant units (module docstring); logs ``redo_reinitialised`` (units reset at
    this iteration) on the iterations it acts."""

    name = "redo"

    def __init__(self, policy: SequencePolicy, seed: int, every: int = 10, tau: float = 0.1, **kw):
        super().__init__(policy, seed, **kw)
        if every < 1 or tau < 0:
            raise ValueError(f"ReDo needs every >= 1 and tau >= 0, got {every} and {tau}")
        self.every, self.tau = every, tau
        self.iterations = 0

    def dormant_units(self, probe) -> dict[str, Tensor]:
        """Group name -> indices of its units with score ``<= τ``."""
        return {
            g.name: torch.nonzero(unit_scores(probe.activations[g.name]) <= self.tau).flatten()
            for g in self.groups
        }

    def after_iteration(self, batch: Any, row: dict[str, Any]) -> None:
        self.iterations += 1
        if self.iterations % self.every:
            return
        probe = self._probe(batch)
        if probe is None:
            return
        dormant = self.dormant_units(probe)  # all scores first: a reset changes later layers
        count = sum(int(v.numel()) for v in dormant.values())
        if count:
            fresh = fresh_parameters(self.policy, self.generator)
            for g in self.groups:
                self._reinit(g, dormant[g.name], fresh)
        self.applied += count
        row["redo_reinitialised"] = count

    def state_dict(self) -> dict[str, Any]:
        return {**self._base_state(), "iterations": self.iterations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iterations = int(self._load_base(state)["iterations"])


# -- continual backprop ---------------------------------------------------------------------------
class ContinualBackprop(_UnitRemedy):
    """Continual backpropagation (module docstring), one utility update per trainer iteration
    on the iteration's batch; logs ``cbp_replaced`` (units replaced at this iteration)."""

    name = "cbp"

    def __init__(
        self,
        policy: SequencePolicy,
        seed: int,
        replacement_rate: float = 1e-3,
        maturity: int = 20,
        decay: float = 0.99,
        **kw,
    ):
        super().__init__(policy, seed, **kw)
        if not 0.0 <= replacement_rate <= 1.0 or maturity < 0 or not 0.0 <= decay < 1.0:
            raise ValueError(
                "continual backprop needs replacement_rate in [0, 1], maturity >= 0 and decay "
                f"in [0, 1), got {replacement_rate}, {maturity} and {decay}"
            )
        self.replacement_rate, self.maturity, self.decay = replacement_rate, maturity, decay
        self.utility = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in self.groups}
        self.age = {g.name: torch.zeros(g.size, dtype=torch.int64) for g in self.groups}
        self.pending = {g.name: 0.0 for g in self.groups}

    def update_utility(self, probe) -> None:
        """``u ← η u + (1 − η) E|h| Σ|w_out|`` and ``a ← a + 1`` for every unit."""
        params = dict(self.policy.named_parameters())
        for g in self.groups:
            mean_abs = probe.activations[g.name].detach().abs().double().mean(0).cpu()
            contribution = mean_abs * outgoing_magnitude(params, g)
            self.utility[g.name] = self.decay * self.utility[g.name] + (1 - self.decay) * (
                contribution
            )
            self.age[g.name] += 1

    def to_replace(self, group: UnitGroup) -> Tensor:
        """The units of ``group`` to replace now (updates the running count)."""
        eligible = torch.nonzero(self.age[group.name] > self.maturity).flatten()
        self.pending[group.name] += self.replacement_rate * eligible.numel()
        n = int(self.pending[group.name])
        if n == 0:
            return eligible[:0]
        self.pending[group.name] -= n
        order = torch.argsort(self.utility[group.name][eligible], stable=True)
        return eligible[order[:n]]

    def after_iteration(self, batch: Any, row: dict[str, Any]) -> None:
        probe = self._probe(batch)
        if probe is None:
            return
        self.update_utility(probe)
        fresh = None
        count = 0
        for g in self.groups:
            units = self.to_replace(g)
            if units.numel() == 0:
                continue
            if fresh is None:
                fresh = fresh_parameters(self.policy, self.generator)
            self._reinit(g, units, fresh)
            self.utility[g.name][units] = 0.0
            self.age[g.name][units] = 0
            count += int(units.numel())
        self.applied += count
        row["cbp_replaced"] = count

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._base_state(),
            "utility": {k: v.clone() for k, v in self.utility.items()},
            "age": {k: v.clone() for k, v in self.age.items()},
            "pending": dict(self.pending),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = self._load_base(state)
        if set(state["utility"]) != set(self.utility):
            raise ValueError(
                f"the cbp state has unit groups {sorted(state['utility'])}, this plugin "
                f"{sorted(self.utility)}"
            )
        self.utility = {k: v.clone() for k, v in state["utility"].items()}
        self.age = {k: v.clone() for k, v in state["age"].items()}
        self.pending = {k: float(v) for k, v in state["pending"].items()}


# -- stage-end remedies ---------------------------------------------------------------------------
def _module_params(policy: nn.Module, modules: Sequence[str]) -> list[str]:
    """The parameter names under the module paths ``modules`` (each must hold some)."""
    names = [n for n, _ in policy.named_parameters()]
    chosen: list[str] = []
    for m in modules:
        hit = [n for n in names if n.startswith(m + ".") or n == m]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"no parameters under module {m!r}; the policy's modules: {tops}")
        chosen += [n for n in hit if n not in chosen]
    return chosen


class ShrinkPerturb(_Remedy):
    """Shrink & perturb at every stage start (module docstring), on the parameters under
    ``modules`` (all when empty)."""

    name = "shrink_perturb"

    def __init__(
        self,
        policy: SequencePolicy,
        seed: int,
        shrink: float = 0.8,
        perturb: float = 0.2,
        modules: Sequence[str] = (),
        optimizer: OptimizerGetter | None = None,
    ):
        super().__init__(policy, seed, optimizer)
        if not 0.0 <= shrink <= 1.0 or perturb < 0:
            raise ValueError(f"shrink must be in [0, 1] and perturb >= 0, got {shrink}, {perturb}")
        self.shrink, self.perturb = shrink, perturb
        self.names = _module_params(policy, modules) if modules else None

    def apply(self) -> None:
        """``θ ← λ θ + σ θ_fresh`` now."""
        fresh = fresh_parameters(self.policy, self.generator)
        with torch.no_grad():
            for n, p in self.policy.named_parameters():
                if self.names is None or n in self.names:
                    p.mul_(self.shrink).add_(fresh[n], alpha=self.perturb)
        self.applied += 1

    def start_stage(self) -> None:  # after the ended stage was scored
        self.apply()


class ResetModules(_Remedy):
    """Re-initialise the parameters under ``modules`` at every stage start (clearing their
    optimiser state when ``reset_moments``)."""

    name = "reset"

    def __init__(
        self,
        policy: SequencePolicy,
        seed: int,
        modules: Sequence[str] = ("head", "value"),
        optimizer: OptimizerGetter | None = None,
        reset_moments: bool = True,
    ):
        super().__init__(policy, seed, optimizer)
        if not modules:
            raise ValueError("ResetModules needs at least one module path (e.g. 'head')")
        self.names = _module_params(policy, modules)
        self.reset_moments = reset_moments

    def apply(self) -> None:
        fresh = fresh_parameters(self.policy, self.generator)
        opt = self.optimizer() if self.reset_moments else None
        with torch.no_grad():
            for n, p in self.policy.named_parameters():
                if n in self.names:
                    p.copy_(fresh[n])
                    if opt is not None:
                        opt.state.pop(p, None)
        self.applied += 1

    def start_stage(self) -> None:  # after the ended stage was scored
        self.apply()


class L2Init(_Remedy):
    """Regenerative regularisation: the loss term ``c Σ ‖θ − θ_0‖²`` (logged as
    ``l2_init_penalty``), θ_0 the parameters when the plugin was made (the initialisation)."""

    name = "l2_init"

    def __init__(self, policy: SequencePolicy, coef: float = 1e-3):
        super().__init__(policy, seed=0)
        if coef < 0:
            raise ValueError(f"l2_init coef must be >= 0, got {coef}")
        self.coef = coef
        self.initial = {n: p.detach().clone() for n, p in policy.named_parameters()}

    def loss(self, params: Mapping[str, Tensor], stats: dict[str, float]) -> Tensor | None:
        terms = [((params[n] - t0) ** 2).sum() for n, t0 in self.initial.items() if n in params]
        if not terms:
            return None
        value = self.coef * torch.stack(terms).sum()
        stats["l2_init_penalty"] = stats.get("l2_init_penalty", 0.0) + float(value.detach())
        return value

    def state_dict(self) -> dict[str, Any]:
        return {**self._base_state(), "initial": {n: t.clone() for n, t in self.initial.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = self._load_base(state)
        if set(state["initial"]) != set(self.initial):
            raise ValueError("the l2_init state is for a policy with other parameters")
        devices = {n: p.device for n, p in self.policy.named_parameters()}
        self.initial = {n: t.clone().to(devices[n]) for n, t in state["initial"].items()}


# -- from the config ------------------------------------------------------------------------------
def make_remedy(
    settings: PlasticitySettings,
    policy: nn.Module,
    seed: int,
    optimizer: OptimizerGetter | None = None,
) -> Plugin | None:
    """The remedy ``settings.remedy`` names (None for none); its generator is seeded from the
    run's ``seed`` and the remedy's name."""
    kind = settings.remedy
    if kind == "none":
        return None
    if kind not in REMEDIES:
        raise ValueError(f"unknown plasticity remedy {kind!r}; expected one of {REMEDIES}")
    if not isinstance(policy, SequencePolicy):
        raise ValueError(
            f"plasticity.remedy={kind} acts on an ssm.SequencePolicy, got {type(policy).__name__}"
        )
    s = settings
    own_seed = derive_seed(seed, "plasticity", kind)
    units = dict(
        optimizer=optimizer,
        groups=s.groups,
        probe_sequences=s.probe_sequences,
        probe_steps=s.probe_steps,
        reset_moments=s.reset_moments,
    )
    if kind == "redo":
        return ReDo(policy, own_seed, every=s.redo_every, tau=s.redo_tau, **units)
    if kind == "cbp":
        return ContinualBackprop(
            policy,
            own_seed,
            replacement_rate=s.cbp_replacement_rate,
            maturity=s.cbp_maturity,
            decay=s.cbp_decay,
            **units,
        )
    if kind == "shrink_perturb":
        return ShrinkPerturb(policy, own_seed, shrink=s.shrink, perturb=s.perturb)
    if kind == "reset":
        return ResetModules(
            policy, own_seed, s.reset_modules, optimizer=optimizer, reset_moments=s.reset_moments
        )
    return L2Init(policy, s.l2_init_coef)


def make_metrics(settings: PlasticitySettings, policy: nn.Module) -> PlasticityMetrics | None:
    """The metrics plugin (None when ``settings.metrics_every`` is 0)."""
    s = settings
    if not s.metrics_every:
        return None
    if not isinstance(policy, SequencePolicy):
        raise ValueError(
            f"plasticity.metrics_every needs an ssm.SequencePolicy, got {type(policy).__name__}"
        )
    return PlasticityMetrics(
        policy,
        every=s.metrics_every,
        probe_sequences=s.probe_sequences,
        probe_steps=s.probe_steps,
        tau=s.dormant_tau,
        dead_eps=s.dead_eps,
        srank_delta=s.srank_delta,
    )
