"""MAML (second order, FOMAML) with the MAML++ options: learned inner learning rates, the
multi-step loss and derivative-order annealing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metarl.trajectory import Trajectory
from ssm.policy import SequencePolicy

from . import functional as F
from .base import MetaGradient, MetaLearner, Support, exact, note_fused_backends, probe_second_order
from .batch import TaskBatch
from .functional import LearningRates, Params
from .surrogates import OUTER_OBJECTIVES, OuterObjective, outer_loss, query_kl


def msl_weights(steps: int, iteration: int, anneal_iters: int) -> list[float]:
    """MAML++ multi-step loss weights (Antoniou, Edwards & Storkey, 2019, "How to train your
    MAML"): uniform ``1/K`` at iteration 0; every non-final weight decays linearly to ``0.03/K``
    over ``anneal_iters`` iterations and the final one takes up the rest."""
    if steps == 1:
        return [1.0]
    uniform, floor = 1.0 / steps, 0.03 / steps
    decay = uniform / anneal_iters
    early = [max(uniform - iteration * decay, floor)] * (steps - 1)
    return [*early, 1.0 - sum(early)]


class MAML(MetaLearner):
    """MAML for RL (Finn, Abbeel & Levine, 2017, "Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks"), with the MAML++ options.

    Per task, from the shared initialisation ``φ_0 = θ``::

        φ_{k+1} = φ_k - α_k ⊙ ∇_φ L_in(φ_k; D_k),        k = 0 .. K-1
        L_task(θ) = Σ_k w_k L_out(φ_{k+1}; Q)            (w = [0, .., 0, 1] without MSL)

    and θ descends ``∇_θ mean_tasks L_task``. ``D_k`` are support trajectories (sampled with
    ``φ_k`` when resampled, else one batch sampled with θ), ``Q`` the query trajectories sampled
    with ``φ_K``. ``L_in`` is the LVC surrogate by default, whose Hessian carries the
    score-function term of the sampling distribution (see :mod:`metarl.meta.surrogates`).

    Options: ``first_order`` (FOMAML: ``∇L_in`` is a constant, so ``dφ_K/dθ = I``);
    ``lr_mode`` ``"lslr"`` (one learned α per parameter tensor and step, MAML++) or
    ``"meta_sgd"`` (one per element and step, Li et al., 2017); ``multi_step_loss`` (MAML++ MSL
    weights :func:`msl_weights`; the query loss of an intermediate ``φ_k`` is importance-weighted
    against the query's behaviour ``φ_K``, an approximation); derivative-order annealing is the
    ``first_order`` override of :meth:`meta_gradient` (see ``MetaConfig.first_order_iters``).
    """

    algo = "maml"

    def __init__(
        self,
        policy: SequencePolicy,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        first_order: bool = False,
        outer_objective: OuterObjective = "vpg",
        lr_mode: str = "fixed",
        multi_step_loss: bool = False,
        msl_anneal_iters: int = 100,
        ent_coef: float = 0.0,
        **common: Any,
    ):
        super().__init__(policy, inner_lr, inner_steps, **common)
        if outer_objective not in OUTER_OBJECTIVES:
            raise ValueError(f"outer_objective must be one of {OUTER_OBJECTIVES}")
        if lr_mode not in ("fixed", "lslr", "meta_sgd"):
            raise ValueError(f"lr_mode must be 'fixed', 'lslr' or 'meta_sgd', got {lr_mode!r}")
        self.first_order, self.outer_objective, self.lr_mode = first_order, outer_objective, lr_mode
        self.multi_step_loss, self.msl_anneal_iters, self.ent_coef = (
            multi_step_loss,
            msl_anneal_iters,
            ent_coef,
        )
        self.lrs: Params | None = None
        if lr_mode != "fixed":
            self.lrs = {}
            for name, p in self.named_parameters().items():
                shape = (inner_steps,) if lr_mode == "lslr" else (inner_steps, *p.shape)
                t = torch.full(shape, self.inner_lr, dtype=p.dtype, device=p.device)
                self.lrs[name] = t.requires_grad_()
        if not first_order:
            note_fused_backends(policy)

    def inner_lrs(self) -> LearningRates:
        return self.inner_lr if self.lrs is None else self.lrs

    def meta_parameters(self) -> list[Tensor]:
        """Everything the outer optimiser updates: θ and the learned inner lrs."""
        return list(self.named_parameters().values()) + list((self.lrs or {}).values())

    # -- learn2learn-style surface --------------------------------------------------------------
    @exact
    def adapt(
        self,
        params: Params | None,
        support: Support | Trajectory,
        steps: int | None = None,
        first_order: bool | None = None,
        lrs: LearningRates | None = None,
    ) -> Params:
        """``φ_K`` for one task. ``params=None`` starts from the module's own parameters, so the
        result stays differentiable in them (and in learned lrs) by ordinary autograd."""
        fo = self.first_order if first_order is None else first_order
        return self._adapt_all(params, support, steps, fo, lrs)[0][-1]

    def _adapt_all(self, params, support, steps, first_order, lrs=None):
        support = self._batch(support)
        lrs = self.inner_lrs() if lrs is None else lrs
        phi, path, losses = self._theta(params), [], []
        for k in range(self._steps(support, steps)):
            batch = self._support_at(support, k)
            phi, loss = F.gradient_step(
                lambda p, b=batch: self.inner_loss(p, b), phi, lrs, k, first_order
            )
            path.append(phi)
            losses.append(loss)
        if not path:
            path = [phi]
        return path, losses

    @exact
    def outer_loss(self, adapted: Params, query: TaskBatch | Trajectory) -> Tensor:
        """The query loss of one task at adapted parameters."""
        q = self._batch(query)
        return outer_loss(
            self.policy, adapted, q, self.outer_objective, self.clip_coef, self.ent_coef
        )

    @exact
    def task_loss(
        self,
        params: Params | None,
        support: Support | Trajectory,
        query: TaskBatch | Trajectory,
        first_order: bool | None = None,
        weights: Sequence[float] | None = None,
        lrs: LearningRates | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``Σ_k w_k L_out(φ_{k+1}; Q)`` for one task, and its diagnostics."""
        fo = self.first_order if first_order is None else first_order
        path, inner = self._adapt_all(params, support, None, fo, lrs)
        weights = list(weights) if weights is not None else [0.0] * (len(path) - 1) + [1.0]
        if len(weights) != len(path):
            raise ValueError(f"{len(weights)} step weights for {len(path)} inner steps")
        q = self._batch(query)
        total = 0.0
        for w, phi in zip(weights, path):
            if w:
                total = total + w * self.outer_loss(phi, q)
        theta = self._theta(params)
        aux = {
            "inner_loss": torch.stack(inner).mean().detach(),
            "adapt_distance": F.sq_norm(F.sub(path[-1], theta)).sqrt().detach(),
        }
        return total, aux

    def step_weights(self, iteration: int) -> list[float]:
        if not self.multi_step_loss:
            return [0.0] * (self.inner_steps - 1) + [1.0]
        return msl_weights(self.inner_steps, iteration, self.msl_anneal_iters)

    # -- meta-batch -----------------------------------------------------------------------------
    @exact
    def task_losses(
        self,
        params: Params,
        supports: Support,
        query: TaskBatch,
        first_order: bool | None = None,
        iteration: int = 0,
        lrs: LearningRates | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Each task's loss ``(n_tasks,)`` of a stacked meta-batch, as a function of θ (and lrs),
        with the per-task diagnostics."""
        weights = self.step_weights(iteration)
        lrs = self.inner_lrs() if lrs is None else lrs

        def one(theta, rates, sup, qry):
            return self.task_loss(theta, sup, qry, first_order, weights, rates)

        return self._map(one, (params, lrs, supports, query), (None, None, 0, 0))

    @exact
    def meta_loss(
        self,
        params: Params,
        supports: Support,
        query: TaskBatch,
        first_order: bool | None = None,
        iteration: int = 0,
        lrs: LearningRates | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean task loss over the stacked meta-batch, as a function of θ (and lrs)."""
        per_task, aux = self.task_losses(params, supports, query, first_order, iteration, lrs)
        return per_task.mean(), {"outer_loss": per_task.mean().detach()} | {
            k: v.mean() for k, v in aux.items()
        }

    @exact
    def query_kl(
        self, params: Params, supports: Support, query: TaskBatch, first_order: bool | None = None
    ) -> Tensor:
        """Mean over tasks of ``KL(π_old ‖ π_{φ_K(params)})`` on the query states, where
        ``π_old`` is the adapted policy that sampled the query."""
        lrs = self.inner_lrs()

        def one(theta, sup, qry):
            phi = self.adapt(theta, sup, first_order=first_order, lrs=lrs)
            return query_kl(self.policy, phi, qry)

        return self._map(one, (params, supports, query), (None, 0, 0)).mean()

    @exact
    def meta_gradient(
        self,
        supports: Support,
        query: TaskBatch,
        first_order: bool | None = None,
        iteration: int = 0,
    ) -> MetaGradient:
        """``∇_θ mean_tasks L_task`` (and the learned lrs' gradient) for a stacked meta-batch,
        plus the critic's gradient when ``baseline='critic'``.

        The inner loop runs under ``torch.func`` (``vmap`` over tasks of ``grad`` steps); the
        outermost derivative is ordinary autograd, which composes with both and spares one
        functorch level of per-op overhead (about 1.5x faster than ``grad`` of the same loss).
        """
        fo = self.first_order if first_order is None else first_order
        theta = {k: v.requires_grad_() for k, v in self.params().items()}
        rates = (
            None
            if self.lrs is None
            else {k: v.detach().clone().requires_grad_() for k, v in self.lrs.items()}
        )
        supports = self._batch(supports)
        if not fo:
            probe_second_order(self, supports, fwd_over_rev=False)
        leaves = list(theta.values()) + list((rates or {}).values())
        try:
            with torch.enable_grad():
                loss, aux = self.meta_loss(theta, supports, query, fo, iteration, rates)
                flat = torch.autograd.grad(loss, leaves, allow_unused=True)
        except RuntimeError as e:
            if fo:
                raise
            raise ValueError(
                "the second-order meta-gradient failed under torch.func "
                f"({type(e).__name__}: {e}). The policy must support double backward inside "
                "torch.func transforms (every ssm layer does, on its pure-torch path); for a "
                "policy that cannot, use first_order=True (algo='fomaml')."
            ) from e
        flat = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, flat)]
        g = dict(zip(theta, flat[: len(theta)]))
        g_lr = None if rates is None else dict(zip(rates, flat[len(theta) :]))
        stats = {k: float(v) for k, v in aux.items()} | {"first_order": float(fo)}
        grads = self._with_value(g, supports, stats)
        return MetaGradient(grads, g_lr, stats)
