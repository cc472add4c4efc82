"""Gradient meta-RL on ``torch.func``: MAML (second order, with a DiCE/LVC-corrected inner
surrogate), FOMAML, iMAML, Reptile, the MAML++ options, and Adam or TRPO outer steps.

- :class:`MAML`, :class:`IMAML`, :class:`Reptile`: learn2learn-sized learners
  (``adapt(params_or_none, support) -> params``, ``outer_loss``, ``meta_gradient``) over the
  functional core in :mod:`metarl.meta.functional`; the inner loop of a meta-batch runs under one
  ``vmap`` over tasks.
- :class:`MetaConfig`, :class:`MetaTrainer` and :func:`train_meta`: the training loop (support ->
  adapt -> query -> outer step), resumable one iteration at a time.
- :mod:`metarl.meta.adaptation`: :func:`adapt_eval` (returns before and after each adaptation
  step), the in-context and fine-tuning counterparts, and their 95%-CI summaries.
- :mod:`metarl.meta.surrogates`: the inner/outer objectives and the estimator behind them.
- :mod:`metarl.meta.testing`: the ``higher`` oracle (tests and benchmarks only) and tiny fixtures.
"""

from metarl.task_rollout import TaskBatchedPolicy, collect_tasks

from .adaptation import adapt_eval, finetune_learner, in_context_eval, summarize_curves
from .batch import TaskBatch, task_batch, task_batches
from .config import MetaConfig
from .functional import conjugate_gradient, implicit_meta_gradient
from .learners import (
    IMAML,
    MAML,
    MetaGradient,
    MetaLearner,
    Reptile,
    make_learner,
    msl_weights,
    second_order_error,
)
from .surrogates import head_kl, inner_loss, outer_loss
from .train import MetaIterationStats, MetaTrainer, train_meta
from .trpo import TRPOResult, trpo_step

__all__ = [
    "IMAML",
    "MAML",
    "MetaConfig",
    "MetaGradient",
    "MetaIterationStats",
    "MetaLearner",
    "MetaTrainer",
    "Reptile",
    "TRPOResult",
    "TaskBatch",
    "TaskBatchedPolicy",
    "adapt_eval",
    "collect_tasks",
    "conjugate_gradient",
    "finetune_learner",
    "head_kl",
    "implicit_meta_gradient",
    "in_context_eval",
    "inner_loss",
    "make_learner",
    "msl_weights",
    "outer_loss",
    "second_order_error",
    "summarize_curves",
    "task_batch",
    "task_batches",
    "train_meta",
    "trpo_step",
]
