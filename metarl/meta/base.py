"""What every gradient meta-learner shares (:class:`MetaLearner`), and the checks that keep the
``torch.func`` machinery honest.

The inner loop runs inside ``torch.func`` transforms. There, on CPU, ``ssm``'s selective scan runs
the fused kernel of :mod:`ssm.selective_recurrence`, which has vmap, forward-mode and
double-backward rules of its own (a meta-batch of tasks is one kernel call, and the second-order
part of the meta-gradient is fused too). CUDA layers (mamba-ssm's kernel is first-order only) and
layers pinned to ``backend="torch"`` use the pure-torch reference there. Either way the
meta-gradients are exact to second order (and third, for MAML-TRPO's exact Fisher).

The learners' methods run in :func:`ssm.norm.exact_norms` (the :func:`exact` decorator), where the
policy's layer norms compute in composite form (torch's fused layer norm has wrong higher
derivatives under ``vmap`` and at third order; :mod:`ssm.norm`). Before their first second-order
meta-gradient the learners check the policy's Hessian-vector product against finite differences
(:func:`second_order_error`; ``torch.func`` silently drops the second-order part of a
``@once_differentiable`` backward), and a policy that fails raises a ``ValueError`` pointing to
``first_order=True``.
"""

from __future__ import annotations

import abc
import copy
import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch.func import grad

from metarl.trajectory import Trajectory
from ssm import backend as ssm_backend
from ssm.norm import exact_norms
from ssm.policy import SequencePolicy

from . import functional as F
from .batch import BASELINES, Baseline, TaskBatch, select_task, task_batch, task_batches
from .functional import LearningRates, Params
from .surrogates import INNER_OBJECTIVES, InnerObjective, inner_loss, value_loss

log = logging.getLogger("metarl.meta")

Support = TaskBatch | Sequence[TaskBatch]
"""One batch reused for every inner step, or one batch per inner step (resampled support)."""


class MetaGradient(NamedTuple):
    """The meta-gradient of the mean task loss (to *descend*), with diagnostics."""

    grads: Params
    """gradient for each trainable policy parameter"""
    lr_grads: Params | None
    """gradient for each learned inner learning rate (None when they are fixed)"""
    stats: dict[str, float]
    """outer_loss, inner_loss, value_loss, adapt_distance, ..."""


def exact(method: Callable) -> Callable:
    """Run a learner method in :func:`ssm.norm.exact_norms`: the policy's layer norms compute in
    composite form there even where a higher derivative is taken by ordinary autograd outside a
    ``torch.func`` transform (the fused kernel's higher derivatives are wrong; a mode switch,
    like ``torch.no_grad``, not a patch of the modules)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with exact_norms():
            return method(self, *args, **kwargs)

    return wrapper


def _check_lr_steps(inner_lr: float, inner_steps: int) -> None:
    if (
        isinstance(inner_lr, bool)
        or not isinstance(inner_lr, float | int)
        or not 0 < inner_lr < math.inf
    ):
        raise ValueError(f"inner_lr must be a number > 0, got {inner_lr!r}")
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}")


class MetaLearner(abc.ABC):
    """What every gradient meta-learner shares: the policy and its parameter dict, advantage
    estimation, the inner surrogate, and the task map (``vmap`` or loop).

    Args:
        policy: a :class:`ssm.SequencePolicy` (anything ``policy_evaluate`` can run).
        inner_lr, inner_steps: the inner SGD step size (> 0) and number of steps (>= 1).
        inner_objective: ``"lvc"`` (default), ``"ppo"`` or ``"vpg"`` (see ``surrogates``).
        gamma, gae_lambda, baseline, norm_adv: advantage estimation (see ``batch``).
        vf_coef: critic regression weight, with ``baseline="critic"``.
        vectorize: ``vmap`` over tasks (else a Python loop; a failing vmap falls back to the
            loop with a logged warning).
        vmap_chunk: tasks per vmapped call (None: the whole meta-batch in one). Smaller chunks
            bound the size of every intermediate tensor; on CPU that can be faster (see the
            README's meta-gradient benchmark). Values are the same either way.
        check_second_order: probe the policy's second derivatives once before the first
            second-order meta-gradient (see :func:`second_order_error`).
    """

    algo = "base"

    def __init__(
        self,
        policy: SequencePolicy,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        inner_objective: InnerObjective = "lvc",
        clip_coef: float = 0.2,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        baseline: Baseline = "linear",
        norm_adv: bool = True,
        vf_coef: float = 0.5,
        vectorize: bool = True,
        check_second_order: bool = True,
        vmap_chunk: int | None = None,
    ):
        _check_lr_steps(inner_lr, inner_steps)
        if vmap_chunk is not None and (not isinstance(vmap_chunk, int) or vmap_chunk < 1):
            raise ValueError(f"vmap_chunk must be None or an int >= 1, got {vmap_chunk!r}")
        if inner_objective not in INNER_OBJECTIVES:
            raise ValueError(f"inner_objective must be one of {INNER_OBJECTIVES}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if not isinstance(policy, torch.nn.Module):
            raise ValueError(f"policy must be an nn.Module, got {type(policy).__name__}")
        missing = [a for a in ("initial_state", "log_prob", "entropy") if not hasattr(policy, a)]
        if missing:
            raise ValueError(
                f"{type(self).__name__} meta-learns RL policies: it needs an ssm.SequencePolicy "
                f"(it re-runs trajectories through one), got a {type(policy).__name__} without "
                f"{', '.join(missing)}; for your own module and loss use "
                "metarl.meta.generic.adapt(module, loss_fn, lr=..., steps=...)"
            )
        self.policy, self.inner_lr, self.inner_steps = policy, float(inner_lr), inner_steps
        self.inner_objective, self.clip_coef = inner_objective, clip_coef
        self.gamma, self.gae_lambda, self.baseline, self.norm_adv = (
            gamma,
            gae_lambda,
            baseline,
            norm_adv,
        )
        self.vf_coef, self.vectorize, self.vmap_chunk = vf_coef, vectorize, vmap_chunk
        self.check_second_order, self._second_order_checked = check_second_order, False

    # -- parameters -----------------------------------------------------------------------------
    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The policy's trainable parameters (the meta-parameters θ)."""
        return {n: p for n, p in self.policy.named_parameters() if p.requires_grad}

    def params(self) -> Params:
        """A snapshot of θ: detached copies (later optimiser steps do not change it)."""
        return {k: v.detach().clone() for k, v in self.named_parameters().items()}

    def _theta(self, params: Params | None) -> Params:
        return dict(self.named_parameters()) if params is None else params

    def inner_lrs(self) -> LearningRates:
        return self.inner_lr

    # -- data -----------------------------------------------------------------------------------
    def prepare(self, traj: Trajectory, n_tasks: int | None = None) -> TaskBatch:
        """Advantages for a rollout: one task (``n_tasks=None``, no task axis) or ``n_tasks``
        tasks of equally many sub-envs (stacked)."""
        kw = dict(
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            normalize=self.norm_adv,
            baseline=self.baseline,
        )
        if n_tasks is None:
            return task_batch(traj, **kw)
        return task_batches(traj, n_tasks, **kw)

    def _batch(self, support: Any) -> Any:
        if isinstance(support, Trajectory):
            return self.prepare(support)
        if isinstance(support, list | tuple) and not isinstance(support, TaskBatch):
            return [self._batch(s) for s in support]
        return support

    def _support_at(self, support: Support, step: int) -> TaskBatch:
        if isinstance(support, TaskBatch):
            return support
        if step >= len(support):
            raise ValueError(f"inner step {step} needs a support batch; got only {len(support)}")
        return support[step]

    def _steps(self, support: Support, steps: int | None) -> int:
        if steps is not None:
            if steps < 0:
                raise ValueError(f"steps must be >= 0, got {steps}")
            return steps
        return self.inner_steps if isinstance(support, TaskBatch) else len(support)

    # -- the inner loop -------------------------------------------------------------------------
    @exact
    def inner_loss(self, params: Params, batch: TaskBatch) -> Tensor:
        """The inner surrogate of one task (see :mod:`metarl.meta.surrogates`)."""
        return inner_loss(self.policy, params, batch, self.inner_objective, self.clip_coef)

    @exact
    def inner_step(
        self,
        params: Params,
        batch: TaskBatch,
        step: int,
        anchor: Params | None = None,
        first_order: bool = True,
    ) -> Params:
        """One adaptation step ``φ - α_step ∇L_in(φ)`` on one task (``anchor``: the initial
        parameters, for learners whose inner problem refers to them)."""
        new, _ = F.gradient_step(
            lambda p: self.inner_loss(p, batch), params, self.inner_lrs(), step, first_order
        )
        return new

    @abc.abstractmethod
    def adapt(self, params: Params | None, support: Support | Trajectory, steps=None) -> Params:
        """Adapted parameters of one task (implemented by each learner)."""

    @exact
    def adapt_tasks(self, params: Params | None, supports: Support, steps=None) -> Params:
        """Adapted parameters for each task of stacked ``supports`` (detached, stacked)."""
        theta = F.detach(self._theta(params))
        supports = self._batch(supports)
        n = self._steps(supports, steps)

        def one(sup):
            return F.detach(self.adapt(theta, sup, steps=n))

        with torch.no_grad():
            return self._map(one, (supports,), (0,))

    def _map(self, fn, args, in_dims):
        if self.vectorize:
            try:
                return F.map_tasks(fn, args, in_dims, vectorize=True, chunk=self.vmap_chunk)
            except RuntimeError as e:
                log.warning(
                    "metarl.meta: vmap over tasks failed (%s: %s); falling back to a Python loop "
                    "over tasks for this learner",
                    type(e).__name__,
                    e,
                )
                self.vectorize = False
        return F.map_tasks(fn, args, in_dims, vectorize=False)

    # -- shared parts of the meta-gradient ------------------------------------------------------
    @exact
    def value_gradient(self, supports: Support) -> tuple[Params, float]:
        """``vf_coef ∇ mean_tasks value_loss(θ; support)`` (first order; the critic is
        trained on the support returns of the un-adapted policy). Zeros without a critic."""
        theta = self.params()
        if self.baseline != "critic" or not self.vf_coef:
            return F.zeros_like(theta), float("nan")
        first = self._support_at(supports, 0)

        def total(p):
            per_task = self._map(lambda p, b: value_loss(self.policy, p, b), (p, first), (None, 0))
            return self.vf_coef * per_task.mean(), per_task.mean()

        g, v = grad(total, has_aux=True)(theta)
        return F.detach(g), float(v)

    def _with_value(self, grads: Params, supports: Support, stats: dict) -> Params:
        vg, vl = self.value_gradient(supports)
        stats["value_loss"] = vl
        return F.add(grads, vg)

    @abc.abstractmethod
    def meta_gradient(self, supports: Support, query: TaskBatch | None, **kw) -> MetaGradient:
        """The meta-gradient of a stacked meta-batch (implemented by each learner)."""


def second_order_error(
    policy: torch.nn.Module,
    params: Params,
    batch: TaskBatch,
    objective: InnerObjective = "lvc",
    forward_over_reverse: bool = False,
    seed: int = 0,
) -> float:
    """Relative error of the inner loss's Hessian-vector product, as the meta-learners compute it
    (reverse-over-reverse for MAML, forward-over-reverse for iMAML), against central finite
    differences of its gradient, on a float64 copy of the policy, along one random direction.

    ``torch.func`` does not always fail loudly where a layer's backward is not differentiable: a
    ``@once_differentiable`` backward, for one, silently contributes *nothing* to second-order
    terms. The learners run this probe once, before their first second-order meta-gradient.
    """
    pol = copy.deepcopy(policy).double()

    def f64(x: Tensor) -> Tensor:
        if x.is_complex():
            return x.to(torch.complex128)
        return x.double() if x.is_floating_point() else x

    b = pytree.tree_map(f64, batch)
    theta = {k: v.detach().double() for k, v in params.items()}
    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
    norm = F.sq_norm(v).sqrt()
    v = {k: t / norm for k, t in v.items()}

    def fn(p):
        return inner_loss(pol, p, b, objective)

    with exact_norms():  # as the learners compute
        if forward_over_reverse:
            hv = F.hvp(fn, theta, v)
        else:  # as MAML.meta_gradient: ordinary autograd over a torch.func gradient
            leaves = {k: t.clone().requires_grad_() for k, t in theta.items()}
            with torch.enable_grad():
                inner = F.dot(grad(fn)(leaves), v)
                hs = torch.autograd.grad(inner, list(leaves.values()), allow_unused=True)
            hv = {
                k: torch.zeros_like(t) if h is None else h for (k, t), h in zip(theta.items(), hs)
            }
        eps = 1e-5 * max(1.0, float(F.sq_norm(theta).sqrt()))
        g_plus, g_minus = grad(fn)(F.add(theta, v, eps)), grad(fn)(F.add(theta, v, -eps))
    fd = {k: (g_plus[k] - g_minus[k]) / (2 * eps) for k in theta}
    scale = max(float(F.sq_norm(fd).sqrt()), float(F.sq_norm(hv).sqrt()), 1e-12)
    return float(F.sq_norm(F.sub(hv, fd)).sqrt()) / scale


def probe_second_order(learner: MetaLearner, supports: Support, fwd_over_rev: bool) -> None:
    if not learner.check_second_order or learner._second_order_checked:
        return
    first = select_task(learner._support_at(supports, 0), 0)
    first = TaskBatch(first.traj[[0]], first.advantages[:, :1], first.returns[:, :1])
    err = second_order_error(
        learner.policy, learner.params(), first, learner.inner_objective, fwd_over_rev
    )
    if not err < 1e-3:
        raise ValueError(
            f"the policy's second derivatives are wrong under torch.func (Hessian-vector product "
            f"off by {err:.2g} relative to finite differences): some layer's backward is not "
            "differentiable (e.g. @once_differentiable, or a fused kernel without a double "
            "backward). Use first_order=True (algo='fomaml'), or check_second_order=False if "
            "the policy has kinks that finite differences cannot follow."
        )
    learner._second_order_checked = True


def note_fused_backends(policy: torch.nn.Module) -> None:
    pinned = sorted(
        {type(m).__name__ for m in policy.modules() if getattr(m, "backend", None) == "cuda"}
    )
    if pinned:
        ssm_backend.log_once(
            "meta-second-order-cuda",
            f"metarl.meta: {pinned} pinned to backend='cuda'; second-order meta-gradients run "
            "under torch.func, where ssm uses its pure-torch reference scan (exact, not fused)",
        )
