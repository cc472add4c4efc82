"""iMAML: the implicit meta-gradient of a proximally regularised inner problem."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ssm.policy import SequencePolicy

from . import functional as F
from .base import MetaGradient, MetaLearner, Support, exact, probe_second_order
from .batch import TaskBatch
from .functional import Params
from .surrogates import OUTER_OBJECTIVES, OuterObjective, outer_loss


class IMAML(MetaLearner):
    """iMAML for RL (Rajeswaran, Finn, Kakade & Levine, 2019, "Meta-Learning with Implicit
    Gradients").

    The inner problem is proximally regularised towards the initialisation::

        φ*(θ) = argmin_φ L_in(φ; D) + λ/2 ‖φ - θ‖²

    solved approximately by ``inner_steps`` of gradient descent (step ``inner_lr``) from θ, and
    the meta-gradient is the implicit one (no differentiation through the solver)::

        ∇_θ L_out(φ*) = (I + ∇²L_in(φ*)/λ)⁻¹ ∇_φ L_out(φ*; Q)

    computed by ``cg_steps`` of conjugate gradient on Hessian-vector products of the LVC inner
    surrogate (damped by ``damping``; see :func:`metarl.meta.functional.implicit_meta_gradient`).
    Memory does not grow with the number of inner steps.
    """

    algo = "imaml"

    def __init__(
        self,
        policy: SequencePolicy,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        lam: float = 1.0,
        cg_steps: int = 5,
        damping: float = 0.0,
        outer_objective: OuterObjective = "vpg",
        ent_coef: float = 0.0,
        **common: Any,
    ):
        super().__init__(policy, inner_lr, inner_steps, **common)
        if lam <= 0:
            raise ValueError(f"iMAML needs λ > 0, got {lam}")
        if cg_steps < 1:
            raise ValueError(f"cg_steps must be >= 1, got {cg_steps}")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if inner_lr * lam >= 2:
            raise ValueError(
                f"inner_lr * lam = {inner_lr * lam:g} >= 2: gradient descent on the proximal "
                "term λ/2‖φ - θ‖² diverges; lower inner_lr below 2/λ"
            )
        if outer_objective not in OUTER_OBJECTIVES:
            raise ValueError(f"outer_objective must be one of {OUTER_OBJECTIVES}")
        self.lam, self.cg_steps, self.damping = float(lam), cg_steps, float(damping)
        self.outer_objective, self.ent_coef = outer_objective, ent_coef

    @exact
    def inner_step(self, params, batch, step, anchor=None, first_order=True) -> Params:
        """A gradient step on the proximal objective ``L_in(φ) + λ/2 ‖φ - anchor‖²``."""
        anchor = F.detach(params if anchor is None else anchor)

        def regularised(p):
            return self.inner_loss(p, batch) + 0.5 * self.lam * F.sq_norm(F.sub(p, anchor))

        return F.gradient_step(regularised, params, self.inner_lr, step, first_order=True)[0]

    @exact
    def adapt(self, params: Params | None, support, steps: int | None = None) -> Params:
        """φ* by ``steps`` (default ``inner_steps``) proximal gradient steps; detached."""
        batch = self._batch(support)
        if not isinstance(batch, TaskBatch):
            raise ValueError("iMAML adapts on one support batch (its proximal problem is fixed)")
        n = self.inner_steps if steps is None else steps
        return F.proximal_solve(
            lambda p: self.inner_loss(p, batch), self._theta(params), self.lam, self.inner_lr, n
        )

    @exact
    def outer_loss(self, adapted: Params, query) -> Tensor:
        q = self._batch(query)
        return outer_loss(
            self.policy, adapted, q, self.outer_objective, self.clip_coef, self.ent_coef
        )

    @exact
    def task_gradient(self, params: Params, support: TaskBatch, query: TaskBatch):
        """The implicit meta-gradient of one task and its diagnostics."""
        phi = self.adapt(params, support)
        g, residual = F.implicit_meta_gradient(
            lambda p: self.inner_loss(p, support),
            lambda p: self.outer_loss(p, query),
            phi,
            self.lam,
            self.cg_steps,
            self.damping,
        )
        aux = {
            "outer_loss": self.outer_loss(phi, query).detach(),
            "inner_loss": self.inner_loss(phi, support).detach(),
            "adapt_distance": F.sq_norm(F.sub(phi, params)).sqrt().detach(),
            "cg_residual": residual,
        }
        return g, aux

    @exact
    def meta_gradient(
        self, supports: Support, query: TaskBatch, first_order=None, iteration: int = 0
    ) -> MetaGradient:
        theta = self.params()
        supports = self._batch(supports)
        probe_second_order(self, supports, fwd_over_rev=True)
        g, aux = self._map(self.task_gradient, (theta, supports, query), (None, 0, 0))
        grads = {k: v.mean(0) for k, v in g.items()}
        stats = {k: float(v.mean()) for k, v in aux.items()}
        return MetaGradient(self._with_value(grads, supports, stats), None, stats)
