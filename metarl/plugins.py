"""Trainer plugins: what an add-on (a continual method, an intrinsic reward) may do to *any*
trainer's update, PPO, RL² and the MAML family alike.

Every trainer's update has the same shape, and a plugin hooks into it at four places::

    L(θ) = L_learner(θ) + Σ_p p.loss(θ)         PPO/RL²: each minibatch's loss;
                                                MAML family: the outer loss at θ (the
                                                meta-initialisation), so EWC on a MAML
                                                initialisation is the same plugin as EWC on PPO
    g = p.mask_gradients(∇L)                    (PackNet: frozen weights get no gradient)
    θ ← optimiser(θ, clip(g));  p.after_step(θ)  (PackNet re-fixes frozen weights)
    p.after_iteration(batch, row)                the iteration's data and log row

The continual layer adds the stage hooks: ``stage_progress`` (PackNet prunes on its schedule),
``end_stage`` (EWC, L2 and PackNet consolidate; replay stores the stage's data), ``start_stage``
(after the ended stage was scored: resets and shrink & perturb) and
``evaluation_params`` (PackNet evaluates each stage with that stage's masks). A stage ends in one
place, :meth:`continual.learner.ContinualLearner.end_stage`, which calls ``end_stage`` on every
plugin.

``params`` is always a ``{name: tensor}`` dict: the trainer's live parameters (what the optimiser
steps), so a loss term is differentiable in them by ordinary autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .trajectory import Trajectory

__all__ = ["Plugin", "PluginList", "StageEnd", "mask_module_gradients"]


@dataclass
class StageEnd:
    """What a plugin sees when a stage ends."""

    stage: int
    """the stage that ended (the learner's own count: known boundaries or detections)"""
    params: Mapping[str, Tensor]
    """the parameters the stage ended with (before any iteration a detection discards)"""
    policy: nn.Module
    """the policy (for Fisher estimates and relabelling)"""
    data: list[Trajectory] = field(default_factory=list)
    """the stage's most recent batches, oldest first (PPO: rollouts; RL²: trials; MAML family:
    the support trajectories collected with θ)"""
    generator: torch.Generator | None = None
    """the trainer's generator (a plugin that draws must use it, so runs stay reproducible)"""
    discarded: list[Trajectory] = field(default_factory=list)
    """batches collected after an undetected switch, left out of ``data`` (a detection ends a
    stage a few iterations late)"""


class Plugin:
    """The interface; every hook defaults to "do nothing", so a plugin overrides only its own."""

    name = "plugin"

    def loss(self, params: Mapping[str, Tensor], stats: dict[str, float]) -> Tensor | None:
        """A scalar added to the learner's loss (differentiable in ``params``), or None. May record
        diagnostics in ``stats``, which end up in the iteration's log row."""
        return None

    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The gradients as the optimiser should see them (pure; default: unchanged)."""
        return dict(grads)

    def after_step(self, params: Mapping[str, Tensor]) -> None:
        """After each optimiser step; may fix parameters in place."""

    def after_iteration(self, batch: Any, row: dict[str, Any]) -> None:
        """After each iteration, with its data and its log row (may add entries to the row)."""

    def stage_progress(
        self, stage_iteration: int, stage_iterations: int, params: Mapping[str, Tensor]
    ) -> None:
        """Before iteration ``stage_iteration`` (0-based) of a stage ``stage_iterations`` long,
        when the stage length is known."""

    def end_stage(self, end: StageEnd) -> None:
        """Once at the end of every stage."""

    def start_stage(self) -> None:
        """Before the first iteration of the next stage: after the ended stage was evaluated (a
        known boundary), right after :meth:`end_stage` (a detection). What prepares the network
        for the next stage (a reset, shrink & perturb) belongs here, so that the ended stage is
        scored with the parameters it ended with."""

    def evaluation_group(self, stage: int) -> Hashable | None:
        """Stages with the same group are evaluated with the same parameters; None: the live
        ones."""
        return None

    def evaluation_params(
        self, params: Mapping[str, Tensor], group: Hashable
    ) -> dict[str, Tensor] | None:
        """The parameters to evaluate ``group``'s stages with (see :meth:`evaluation_group`). The
        dict may also hold buffers (progressive columns set the ``active`` column this way); the
        evaluation policy takes every entry whose name it has."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and JSON-able values (checkpoints load with ``weights_only``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def mask_module_gradients(
    module: nn.Module, mask: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
) -> None:
    """Apply a pure gradient mask (``{name: grad} -> {name: grad}``) to ``module``'s ``.grad`` in
    place."""
    named = {n: q.grad for n, q in module.named_parameters() if q.grad is not None}
    masked = mask(named)
    with torch.no_grad():
        for n, q in module.named_parameters():
            if q.grad is not None and masked[n] is not q.grad:
                q.grad.copy_(masked[n])


class PluginList:
    """Plugins applied in order; what trainers hold. Empty by default (no cost)."""

    def __init__(self, plugins: Iterable[Plugin] = ()):
        self.plugins = list(plugins)
        for p in self.plugins:
            if not isinstance(p, Plugin):
                raise ValueError(
                    f"a plugin must be a metarl.plugins.Plugin, got {type(p).__name__}"
                )

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self.plugins)

    def __len__(self) -> int:
        return len(self.plugins)

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def append(self, plugin: Plugin) -> None:
        if not isinstance(plugin, Plugin):
            raise ValueError(
                f"a plugin must be a metarl.plugins.Plugin, got {type(plugin).__name__}"
            )
        self.plugins.append(plugin)

    def loss(self, params: Mapping[str, Tensor], stats: dict[str, float]) -> Tensor | None:
        total = None
        for p in self.plugins:
            term = p.loss(params, stats)
            if term is not None:
                total = term if total is None else total + term
        return total

    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(grads)
        for p in self.plugins:
            out = p.mask_gradients(out)
        return out

    def mask_module_gradients(self, module: nn.Module) -> None:
        """In place on ``module``'s ``.grad`` (the imperative path of PPO)."""
        mask_module_gradients(module, self.mask_gradients)

    def after_step(self, params: Mapping[str, Tensor]) -> None:
        for p in self.plugins:
            p.after_step(params)

    def after_iteration(self, batch: Any, row: dict[str, Any]) -> None:
        for p in self.plugins:
            p.after_iteration(batch, row)

    def stage_progress(self, stage_iteration: int, stage_iterations: int, params) -> None:
        for p in self.plugins:
            p.stage_progress(stage_iteration, stage_iterations, params)

    def end_stage(self, end: StageEnd) -> None:
        for p in self.plugins:
            p.end_stage(end)

    def start_stage(self) -> None:
        for p in self.plugins:
            p.start_stage()

    def evaluation_group(self, stage: int) -> tuple:
        return tuple(p.evaluation_group(stage) for p in self.plugins)

    def evaluation_params(
        self, params: Mapping[str, Tensor], group: tuple
    ) -> dict[str, Tensor] | None:
        """The parameters for an evaluation group (:meth:`evaluation_group`'s tuple); None when
        no plugin changes them."""
        out = None
        for p, g in zip(self.plugins, group):
            if g is None:
                continue
            changed = p.evaluation_params(params if out is None else out, g)
            if changed is not None:
                out = changed
        return out
