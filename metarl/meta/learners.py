"""Gradient meta-learners with a learn2learn-sized surface over a ``torch.func`` core.

    maml = MAML(policy, inner_lr=0.1, inner_steps=1)
    phi = maml.adapt(None, support)          # differentiable in policy.parameters()
    maml.outer_loss(phi, query).backward()   # the meta-gradient, in p.grad

For a meta-batch, :meth:`MAML.meta_gradient` takes :class:`TaskBatch` es stacked over tasks and
runs the whole inner loop under one ``vmap`` over the task axis (parameters shared at the start,
``in_dims=None``; trajectories ``in_dims=0``), differentiated by ordinary autograd from the
outside; ``vectorize=False`` loops over tasks instead (same numbers, tested).

The learners live in :mod:`~metarl.meta.maml`, :mod:`~metarl.meta.imaml` and
:mod:`~metarl.meta.reptile` over the shared :mod:`~metarl.meta.base`; this module selects one
from a :class:`MetaConfig`.
"""

from __future__ import annotations

from ssm.policy import SequencePolicy

from .base import MetaGradient, MetaLearner, Support, second_order_error
from .config import MetaConfig
from .imaml import IMAML
from .maml import MAML, msl_weights
from .reptile import Reptile

__all__ = [
    "IMAML",
    "MAML",
    "MetaGradient",
    "MetaLearner",
    "Reptile",
    "Support",
    "make_learner",
    "msl_weights",
    "second_order_error",
]


def make_learner(policy: SequencePolicy, config: MetaConfig) -> MetaLearner:
    """The learner ``config.algo`` names, with the config's settings."""
    common = dict(
        inner_objective=config.inner_objective,
        clip_coef=config.clip_coef,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        baseline=config.baseline,
        norm_adv=config.norm_adv,
        vf_coef=config.vf_coef,
        vectorize=config.vectorize,
        vmap_chunk=config.vmap_chunk,
    )
    if config.algo in ("maml", "fomaml"):
        return MAML(
            policy,
            config.inner_lr,
            config.inner_steps,
            first_order=config.algo == "fomaml",
            outer_objective=config.outer_objective,
            lr_mode=config.lr_mode,
            multi_step_loss=config.multi_step_loss,
            msl_anneal_iters=config.msl_anneal_iters,
            ent_coef=config.ent_coef,
            **common,
        )
    if config.algo == "imaml":
        return IMAML(
            policy,
            config.inner_lr,
            config.inner_steps,
            lam=config.imaml_lambda,
            cg_steps=config.imaml_cg_steps,
            damping=config.imaml_damping,
            outer_objective=config.outer_objective,
            ent_coef=config.ent_coef,
            **common,
        )
    if config.algo == "reptile":
        return Reptile(policy, config.inner_lr, config.inner_steps, **common)
    raise ValueError(f"unknown algo {config.algo!r}")
