"""PackNet (Mallya & Lazebnik, 2018): one network, disjoint weight subsets per task.

Every element of a prunable parameter (by default: every parameter with >= 2 dimensions) has an
owner: a task index, or ``FREE``. Task ``k`` is learned as follows::

    train k      only FREE weights get gradients (earlier tasks' weights are frozen)
    prune(k)     of the FREE weights, keep the (1 − prune_fraction) share with the largest |θ|
                 per tensor and give them to task k; the rest are set to 0 and stay FREE
    retrain k    (the caller's job, optional) only task k's weights train; FREE ones stay 0
    consolidate  task k's weights are frozen; task k + 1 starts

Other parameters (biases, norms) cannot be shared out by magnitude: they train with task 0 and
are frozen with it. Freezing is enforced twice: :meth:`PackNet.mask_gradients` zeroes the
gradients of frozen elements, and :meth:`PackNet.after_optimizer_step` writes their recorded
values back (Adam's momentum or weight decay would otherwise still move them).

To evaluate task ``k``, :meth:`PackNet.masked_params` zeroes every weight owned by a later task
(and the FREE ones, for finished tasks). Those masked tensors are bitwise equal to the ones task
``k`` ended with, so its outputs stay bit-identical however many tasks follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .regularizers import (
    ConsolidationContext,
    Regularizer,
    _check_params,
    _check_state,
)

__all__ = ["FREE", "PackNet"]

FREE = -1


def _default_prunable(name: str, param: Tensor) -> bool:
    return param.dim() >= 2


class PackNet(Regularizer):
    """Iterative magnitude pruning with per-task weight ownership (see the module docstring).

    Args:
        params: the model's parameters (``dict(module.named_parameters())``): their names and
            shapes fix the masks.
        prune_fraction: share of the FREE weights released by each :meth:`prune`.
        prunable: ``(name, param) -> bool``, which parameters are shared out by magnitude
            (default: those with >= 2 dimensions).
        retrain_fraction: as a trainer plugin (:meth:`stage_progress`), prune when this last
            share of a stage's iterations is left, and retrain the kept weights for it (0: prune
            at the stage's end, in :meth:`consolidate`).

    As a trainer plugin it also evaluates every stage with that stage's masks
    (:meth:`evaluation_group` / :meth:`evaluation_params`).
    """

    kind = "packnet"

    def __init__(
        self,
        params: Mapping[str, Tensor],
        prune_fraction: float = 0.5,
        prunable: Callable[[str, Tensor], bool] | None = None,
        retrain_fraction: float = 0.0,
    ):
        params = _check_params(params, "PackNet")
        if not (isinstance(prune_fraction, (int, float)) and 0.0 <= prune_fraction <= 1.0):
            raise ValueError(f"prune_fraction must be in [0, 1], got {prune_fraction!r}")
        self.prune_fraction = float(prune_fraction)
        if not (isinstance(retrain_fraction, (int, float)) and 0.0 <= retrain_fraction < 1.0):
            raise ValueError(f"retrain_fraction must be in [0, 1), got {retrain_fraction!r}")
        self.retrain_fraction = float(retrain_fraction)
        rule = prunable or _default_prunable
        self.prunable = {n: bool(rule(n, p)) for n, p in params.items()}
        self.owner = {
            n: torch.full(p.shape, FREE, dtype=torch.int16, device=p.device)
            for n, p in params.items()
        }
        self.task = 0  # the task being learned
        self.pruned = False  # task `task` has been pruned (retrain phase)
        self.reference: dict[str, Tensor] = {}  # values that non-trainable elements must keep

    # -- masks ----------------------------------------------------------------------------------
    def trainable(self, name: str) -> Tensor:
        """Bool mask of the elements of ``name`` that the current phase may change."""
        owner = self.owner[name]
        return owner == self.task if self.pruned else owner == FREE

    def task_mask(self, name: str, task: int) -> Tensor:
        """Bool mask of the elements of ``name`` that task ``task``'s forward pass uses."""
        if not 0 <= task <= self.task:
            raise ValueError(f"task must be in [0, {self.task}] (tasks seen so far), got {task}")
        owner = self.owner[name]
        used = (owner >= 0) & (owner <= task)
        if task == self.task and not self.pruned:
            used = used | (owner == FREE)  # the task in training uses what it is training
        return used

    def masked_params(self, params: Mapping[str, Tensor], task: int) -> dict[str, Tensor]:
        """``params`` with the weights task ``task`` does not use set to 0 (for evaluation)."""
        params = _check_params(params, "PackNet.masked_params")
        self._check_names(params)
        return {
            n: torch.where(self.task_mask(n, task), p, p.new_zeros(())) for n, p in params.items()
        }

    def _check_names(self, params: Mapping[str, Tensor]) -> None:
        if set(params) != set(self.owner):
            raise ValueError(
                f"params {sorted(params)} differ from the PackNet parameters {sorted(self.owner)}"
            )
        for n, p in params.items():
            if p.shape != self.owner[n].shape:
                raise ValueError(
                    f"{n!r} has shape {tuple(p.shape)}, PackNet expects "
                    f"{tuple(self.owner[n].shape)}"
                )

    # -- hooks ----------------------------------------------------------------------------------
    def mask_gradients(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for n, g in grads.items():
            if n not in self.owner:
                raise ValueError(f"gradient for {n!r}, which PackNet does not know")
            out[n] = torch.where(self.trainable(n), g, g.new_zeros(()))
        return out

    @torch.no_grad()
    def after_optimizer_step(self, params: Mapping[str, Tensor]) -> None:
        """Write the recorded values back into every non-trainable element (in place)."""
        params = _check_params(params, "PackNet.after_optimizer_step")
        for n, p in params.items():
            ref = self.reference.get(n)
            if ref is not None:
                p.copy_(torch.where(self.trainable(n), p, ref))

    @torch.no_grad()
    def prune(self, params: Mapping[str, Tensor], fraction: float | None = None) -> None:
        """End of training task ``task``: give the largest-|θ| ``1 − fraction`` share of each
        prunable tensor's FREE weights to the task, zero the rest (in place on ``params``) and
        enter the retrain phase. Non-prunable parameters go to task 0 whole."""
        params = _check_params(params, "PackNet.prune")
        self._check_names(params)
        if self.pruned:
            raise ValueError(f"task {self.task} is already pruned; consolidate it first")
        frac = self.prune_fraction if fraction is None else float(fraction)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {frac}")
        for n, p in params.items():
            owner = self.owner[n]
            free = owner == FREE
            if not self.prunable[n]:
                owner[free] = self.task  # only ever non-empty during task 0
                continue
            idx = torch.nonzero(free.reshape(-1)).squeeze(1)
            keep = int(round((1.0 - frac) * idx.numel()))
            mag = p.detach().reshape(-1)[idx].abs()
            order = torch.argsort(mag, descending=True, stable=True)  # ties: lower index first
            flat = owner.reshape(-1)
            flat[idx[order[:keep]]] = self.task
            released = idx[order[keep:]]
            p.view(-1)[released] = 0.0
        self.pruned = True
        self.reference = {n: p.detach().clone() for n, p in params.items()}

    def consolidate(
        self, params: Mapping[str, Tensor], context: ConsolidationContext | None = None
    ) -> None:
        """End of task ``task``: prune it if not done yet, freeze its weights, start the next."""
        if not self.pruned:
            self.prune(params)
        self.reference = {n: p.detach().clone() for n, p in params.items()}
        self.task += 1
        self.pruned = False

    def free_fraction(self) -> float:
        """Share of prunable weights still FREE."""
        free = sum(int((o == FREE).sum()) for n, o in self.owner.items() if self.prunable[n])
        total = sum(o.numel() for n, o in self.owner.items() if self.prunable[n])
        return free / max(total, 1)

    # -- as a trainer plugin --------------------------------------------------------------------
    def prune_iteration(self, stage_iterations: int) -> int | None:
        """The stage iteration (completed iterations) before which the stage is pruned, or None
        (pruned at its end)."""
        if self.retrain_fraction <= 0:
            return None
        at = max(1, stage_iterations - round(self.retrain_fraction * stage_iterations))
        return at if at < stage_iterations else None

    def stage_progress(
        self, stage_iteration: int, stage_iterations: int, params: Mapping[str, Tensor]
    ) -> None:
        if not self.pruned and stage_iteration == self.prune_iteration(stage_iterations):
            self.prune(params)

    def evaluation_group(self, stage: int) -> int:
        return min(stage, self.task)

    def evaluation_params(self, params: Mapping[str, Tensor], group: int) -> dict[str, Tensor]:
        return self.masked_params(params, group)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "prune_fraction": self.prune_fraction,
            "prunable": dict(self.prunable),
            "task": self.task,
            "pruned": self.pruned,
            "owner": {n: o.clone() for n, o in self.owner.items()},
            "reference": {n: r.clone() for n, r in self.reference.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state(state, self.kind)
        if set(state["owner"]) != set(self.owner):
            raise ValueError("PackNet state is for parameters with other names")
        for n, o in state["owner"].items():
            if o.shape != self.owner[n].shape:
                raise ValueError(f"PackNet state for {n!r} has another shape")
        self.prune_fraction = float(state["prune_fraction"])
        self.prunable = {n: bool(v) for n, v in state["prunable"].items()}
        self.task, self.pruned = int(state["task"]), bool(state["pruned"])
        self.owner = {n: o.clone() for n, o in state["owner"].items()}
        self.reference = {n: r.clone() for n, r in state["reference"].items()}
