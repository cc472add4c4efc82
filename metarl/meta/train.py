"""Meta-training for the gradient meta-learners: :class:`MetaTrainer` (resumable, one outer
iteration per :meth:`~MetaTrainer.step`) and :func:`train_meta`, a loop over it.

One outer iteration:

1. sample ``meta_batch_size`` training tasks;
2. collect support trajectories with θ (``episodes_per_task`` envs per task), or, with
   ``resample_support``, a fresh batch with each ``φ_k`` before inner step ``k``;
3. adapt every task (one ``vmap`` over tasks) and collect query trajectories, each task acting
   with its own adapted parameters;
4. take the outer step: Adam/SGD on the meta-gradient (plus the learned inner lrs' Adam), or a
   TRPO step on the query surrogate with a KL bound (MAML-TRPO).

Support, resampled support and query of one iteration share one vector env (reset with the
iteration's seeds before each collection). Each iteration logs a :class:`MetaIterationStats` row:
returns and success before and after adaptation, the losses, the KL between the adapted policies
before and after the update, the meta-gradient norm and steps per second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from metarl.collector import Collector, LocalCollector
from metarl.plugins import Plugin, PluginList
from metarl.task_rollout import episode_success_any
from metarl.tasks import TaskFamily
from metarl.trajectory import Trajectory
from ssm.policy import SequencePolicy
from ssm.util import legacy_stream_seed

from .base import probe_second_order
from .batch import TaskBatch
from .config import MetaConfig
from .learners import MAML, MetaLearner, Reptile, make_learner
from .trpo import trpo_step


@dataclass
class MetaIterationStats:
    """One outer iteration's log row (NaN where a quantity does not apply)."""

    iteration: int
    """outer iteration, from 1"""
    global_step: int
    """environment steps so far (support, resampled support and query)"""
    pre_return: float
    """mean episode return of the support trajectories (θ, before adaptation)"""
    post_return: float
    """mean episode return of the query trajectories (after adaptation)"""
    pre_success: float
    """fraction of support episodes that succeeded at any step"""
    post_success: float
    """fraction of query episodes that succeeded at any step"""
    outer_loss: float
    """mean query surrogate loss before the update (NaN for Reptile)"""
    inner_loss: float
    """mean inner surrogate loss over inner steps and tasks (NaN under TRPO)"""
    value_loss: float
    """critic regression loss on the support returns (NaN without a critic)"""
    kl: float
    """mean KL(π_φ(θ_old) ‖ π_φ(θ_new)) of the adapted policies on the query states"""
    grad_norm: float
    """meta-gradient norm before clipping"""
    first_order: bool
    """whether this iteration's meta-gradient was first order"""
    vectorized: bool
    """whether the inner loop ran under vmap (False after a fallback to the loop)"""
    trpo_accepted: bool | None
    """TRPO: whether the line search accepted a step (None for Adam/SGD)"""
    inner_lr_mean: float
    """mean inner learning rate (learned ones move)"""
    steps_per_second: float
    """environment steps per second of wall time, everything included"""
    extras: dict[str, Any] = field(default_factory=dict)
    """what plugins record (penalty, replay losses, ...)"""

    def as_dict(self) -> dict:
        row = asdict(self)
        extras = row.pop("extras")
        return {**row, **extras}


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def _inner_lr_mean(learner: MetaLearner) -> float:
    lrs = learner.inner_lrs()
    if isinstance(lrs, float):
        return lrs
    return float(torch.cat([v.detach().reshape(-1) for v in lrs.values()]).mean())


@dataclass
class MetaBatch:
    """One meta-batch's data: support (θ) and query (adapted) trajectories, the prepared task
    batches the meta-gradient takes, and the env steps collected."""

    pre: Trajectory
    post: Trajectory
    supports: TaskBatch | list[TaskBatch] | None
    query: TaskBatch | None
    steps: int

    def without_batches(self) -> MetaBatch:
        """The trajectories and step count only (what a worker sends back)."""
        return MetaBatch(self.pre, self.post, None, None, self.steps)


def collect_meta_batch(
    learner: MetaLearner,
    collect: Callable[..., Trajectory],
    n_tasks: int,
    seed: int,
    resample: bool = False,
) -> MetaBatch:
    """Support with θ (``collect(seed)``), with ``resample`` a fresh batch with each
    ``φ_k`` before inner step ``k`` (``collect(seed + k, φ_k)``), adaptation of every task (one
    ``vmap``), and the query with the adapted parameters (``collect(seed + K, φ_K)``).
    ``collect(seed, params=None)`` returns the ``(T, N·B)`` trajectory of the meta-batch's tasks
    (a whole batch locally, one slice on a worker)."""
    k_steps = learner.inner_steps
    theta = learner.params()
    pre = collect(seed)
    supports: TaskBatch | list[TaskBatch] = learner.prepare(pre, n_tasks)
    steps = pre.T * pre.B
    if resample:
        supports = [supports]
        for k in range(1, k_steps):
            phi = learner.adapt_tasks(theta, supports, steps=k)
            extra = collect(seed + k, phi)
            supports.append(learner.prepare(extra, n_tasks))
            steps += extra.T * extra.B
    adapted = learner.adapt_tasks(theta, supports)
    post = collect(seed + k_steps, adapted)
    steps += post.T * post.B
    return MetaBatch(pre, post, supports, learner.prepare(post, n_tasks), steps)


def task_seed(seed: int, iteration: int) -> int:
    """The seed of outer iteration ``iteration``'s tasks and envs (a function of the run seed and
    the iteration only, so a resumed run draws the same meta-batches)."""
    return legacy_stream_seed(seed, iteration * 101)


class MetaTrainer:
    """Gradient meta-training as a resumable object: :meth:`step` runs one outer iteration.

    Every iteration draws its tasks and env seeds from ``(config.seed, iteration)``
    (:func:`task_seed`) and its action samples from one generator. :meth:`state_dict` holds
    everything that changes between iterations: the parameters, the learned inner lrs, the
    outer optimisers' moments, the generator and the counters, so a resumed run continues
    bit-for-bit on CPU (tested through the runner).

    A non-finite loss, meta-gradient or parameter raises ``FloatingPointError`` naming it,
    before the counters move (the runner then keeps the last good checkpoint).

    ``plugins`` (:mod:`metarl.plugins`) act on the outer step: their loss terms are added to the
    outer loss at θ (the meta-initialisation; their gradient is added to the meta-gradient),
    their masks apply to the meta-gradient, and ``after_step`` runs after the outer optimiser
    step. (MAML-TRPO's constrained step takes no plugins.) :attr:`last_batch` is the support
    data the last iteration collected with θ: what a continual plugin consolidates on;
    :attr:`last_query`, the query data its adapted policies collected.
    """

    def __init__(
        self,
        policy: SequencePolicy,
        family: TaskFamily,
        config: MetaConfig,
        collector: Collector | None = None,
        plugins: Iterable[Plugin] = (),
    ):
        self.policy, self.family, self.config = policy, family, config
        self.plugins = PluginList(plugins)
        if self.plugins and config.outer == "trpo":
            raise ValueError(
                "plugins act on an Adam/SGD outer step (outer=adam or sgd); MAML-TRPO's "
                "constrained step takes none"
            )
        self.last_batch: Trajectory | None = None
        self.last_query: Trajectory | None = None
        self.learner = make_learner(policy, config)
        self.collector = collector or LocalCollector(policy, family, vectorize=config.vectorize)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.num_steps = config.num_steps or family.max_episode_steps
        named = self.learner.named_parameters()
        self.optimizer: torch.optim.Optimizer | None = None
        if config.outer == "adam":
            self.optimizer = torch.optim.Adam(named.values(), lr=config.outer_lr)
        elif config.outer == "sgd":
            self.optimizer = torch.optim.SGD(named.values(), lr=config.outer_lr)
        elif config.baseline == "critic":  # trpo: the critic head gets its own Adam
            head = [named["value.weight"], named["value.bias"]]
            self.optimizer = torch.optim.Adam(head, lr=config.outer_lr)
        self.lr_optimizer: torch.optim.Optimizer | None = None
        if isinstance(self.learner, MAML) and self.learner.lrs is not None:
            self.lr_optimizer = torch.optim.Adam(
                self.learner.lrs.values(), lr=config.lr_learning_rate
            )
        self.iterations = config.iterations
        self.iteration, self.global_step, self._elapsed = 0, 0, 0.0

    @property
    def done(self) -> bool:
        return self.iteration >= self.iterations

    def _adapts_on_workers(self, first_order: bool) -> bool:
        """Whether this iteration's support, adaptation and query run on the collector's
        workers (a first-order meta-gradient of a MAML/Reptile learner, Adam/SGD outer step,
        and a collector that offers it)."""
        return (
            bool(getattr(self.collector, "adapts_on_workers", False))
            and first_order
            and self.config.outer != "trpo"
            and isinstance(self.learner, MAML | Reptile)
        )

    def close(self) -> None:
        """Release the collector's workers."""
        self.collector.close()

    def step(self) -> MetaIterationStats:
        """One outer iteration: support -> adapt -> query -> outer step (module docstring)."""
        config, learner, it = self.config, self.learner, self.iteration + 1
        start = time.perf_counter() - self._elapsed
        n = config.meta_batch_size
        seed = task_seed(config.seed, it)
        tasks = self.family.sample(n, split="train", seed=seed)
        first_order = getattr(learner, "first_order", True) or it <= config.first_order_iters
        _check_finite_params(learner.params(), it)

        # -- support and query (one task set for all of them) -------------------------------
        if self._adapts_on_workers(first_order):
            batch, mg = self.collector.first_order_meta_batch(
                learner, tasks, config.episodes_per_task, self.num_steps, seed, it, self.generator
            )
        else:
            mg = None
            with self.collector.open(tasks, config.episodes_per_task) as task_set:

                def collect(seed: int, params=None):
                    return task_set.collect(self.num_steps, seed, params, self.generator)

                batch = collect_meta_batch(learner, collect, n, seed, config.resample_support)
        pre, post, supports, query, steps = (
            batch.pre,
            batch.post,
            batch.supports,
            batch.query,
            batch.steps,
        )

        # -- outer step ---------------------------------------------------------------------
        extras: dict[str, Any] = {}
        if config.outer == "trpo":
            stats, grad_norm, kl, accepted = _trpo_update(
                learner, self.optimizer, supports, query, first_order, it, config
            )
        else:
            assert self.optimizer is not None
            if mg is None:
                mg = learner.meta_gradient(supports, query, first_order=first_order, iteration=it)
            stats, accepted = mg.stats, None
            named = learner.named_parameters()
            grads = self._with_plugins(named, mg.grads, extras)
            grad_norm = _apply(self.optimizer, named, grads, config.max_grad_norm)
            self.plugins.after_step(named)
            if self.lr_optimizer is not None and mg.lr_grads is not None:
                _apply(self.lr_optimizer, learner.lrs, mg.lr_grads, config.max_grad_norm)
            # (not computed when adaptation ran on the workers: it would re-adapt every task here)
            kl = math.nan if supports is None else _post_update_kl(learner, supports, query)
        global_step = self.global_step + steps
        elapsed = time.perf_counter() - start
        row = MetaIterationStats(
            iteration=it,
            global_step=global_step,
            pre_return=_mean(pre.episode_returns()),
            post_return=_mean(post.episode_returns()),
            pre_success=_mean(episode_success_any(pre)),
            post_success=_mean(episode_success_any(post)),
            outer_loss=stats.get("outer_loss", math.nan),
            inner_loss=stats.get("inner_loss", math.nan),
            value_loss=stats.get("value_loss", math.nan),
            kl=kl,
            grad_norm=grad_norm,
            first_order=bool(first_order),
            vectorized=learner.vectorize,
            trpo_accepted=accepted,
            inner_lr_mean=_inner_lr_mean(learner),
            steps_per_second=global_step / elapsed,
            extras=extras,
        )
        self.plugins.after_iteration(batch, row.extras)  # the MetaBatch: support and query
        checked = ("grad_norm",) if isinstance(learner, Reptile) else ("grad_norm", "outer_loss")
        for name in checked:
            if not math.isfinite(getattr(row, name)):
                raise FloatingPointError(f"meta-training: {name} is not finite at iteration {it}")
        _check_finite_params(learner.params(), it)
        self.iteration, self.global_step, self._elapsed = it, global_step, elapsed
        self.last_batch, self.last_query = pre, post
        return row

    def _with_plugins(self, named: dict, grads: dict, extras: dict[str, Any]) -> dict:
        """The meta-gradient plus the gradient of the plugins' loss terms at θ (a term on the
        outer loss), through their masks."""
        if not self.plugins:
            return grads
        with torch.enable_grad():
            extra = self.plugins.loss(named, extras)
        if extra is not None and extra.requires_grad:  # (a penalty with no anchor yet is a
            g = torch.autograd.grad(extra, list(named.values()), allow_unused=True)  # constant)
            grads = {
                k: grads[k] if gk is None else grads[k] + gk.detach()
                for (k, _), gk in zip(named.items(), g)
            }
        return self.plugins.mask_gradients(grads)

    def reset_optimizer(self) -> None:
        """Clear the outer optimiser's moments (the continual layer may, at a stage boundary)."""
        if self.optimizer is not None:
            self.optimizer = type(self.optimizer)(
                self.optimizer.param_groups[0]["params"], **self.optimizer.defaults
            )

    def set_family(self, family: TaskFamily) -> None:
        """Sample tasks from ``family`` from the next iteration on (the continual layer switches
        task distributions at stage boundaries). Its spaces must be the policy's."""
        self.collector.close()
        self.family = family
        self.collector = LocalCollector(self.policy, family, vectorize=self.config.vectorize)
        self.num_steps = self.config.num_steps or family.max_episode_steps

    def state_dict(self) -> dict:
        lrs = self.learner.lrs if isinstance(self.learner, MAML) else None
        return {
            "policy": self.policy.state_dict(),
            "inner_lrs": {k: v.detach().clone() for k, v in (lrs or {}).items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "lr_optimizer": None if self.lr_optimizer is None else self.lr_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "global_step": self.global_step,
            "elapsed": self._elapsed,
            "vectorized": self.learner.vectorize,
            "second_order_checked": self.learner._second_order_checked,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        restore_inner_lrs(self.learner, state["inner_lrs"])
        for opt, key in ((self.optimizer, "optimizer"), (self.lr_optimizer, "lr_optimizer")):
            if (opt is None) != (state[key] is None):
                raise ValueError(f"checkpoint {key} does not match this config's outer optimiser")
            if opt is not None:
                opt.load_state_dict(state[key])
        self.generator.set_state(state["generator"])
        self.iteration, self.global_step = int(state["iteration"]), int(state["global_step"])
        self._elapsed = float(state["elapsed"])
        self.learner.vectorize = bool(state["vectorized"])
        self.learner._second_order_checked = bool(state["second_order_checked"])


def restore_inner_lrs(learner: MetaLearner, lrs: dict[str, torch.Tensor]) -> None:
    """Copy learned inner lrs (``MetaTrainer.state_dict()["inner_lrs"]``) into ``learner`` in
    place (so an optimiser over them keeps its references)."""
    own = learner.lrs if isinstance(learner, MAML) else None
    if set(own or {}) != set(lrs):
        raise ValueError(
            f"learned inner lrs {sorted(lrs)} do not match the learner's {sorted(own or {})}"
        )
    with torch.no_grad():
        for k, v in lrs.items():
            own[k].copy_(v)


def _check_finite_params(params: dict[str, torch.Tensor], it: int) -> None:
    bad = sorted(k for k, v in params.items() if not torch.isfinite(v).all())
    if bad:
        raise FloatingPointError(
            f"meta-training: parameters {bad[:3]} are not finite at iteration {it}"
        )


def train_meta(
    policy: SequencePolicy,
    family: TaskFamily,
    config: MetaConfig,
    log: Callable[[MetaIterationStats], None] | None = None,
) -> list[MetaIterationStats]:
    """Meta-train ``policy`` on ``family``'s train tasks with the learner ``config.algo`` names
    (a loop over :meth:`MetaTrainer.step`); returns the per-iteration stats."""
    from ..ppo import run_trainer

    return run_trainer(MetaTrainer(policy, family, config), log)


def _trpo_update(learner, critic_optimizer, supports, query, first_order, it, config):
    """MAML-TRPO: a KL-bounded step of θ on the query surrogate of the adapted policies; with a
    critic, then one Adam step of the value head alone (so the policy's step stays in bounds)."""
    if not isinstance(learner, MAML):
        raise ValueError("outer='trpo' needs a MAML learner")
    named = learner.named_parameters()
    if not first_order:
        probe_second_order(learner, supports, fwd_over_rev=False)
    result = trpo_step(
        learner.params(),
        lambda p: learner.meta_loss(p, supports, query, first_order, it)[0],
        lambda p: learner.query_kl(p, supports, query, first_order),
        config.max_kl,
        config.trpo_cg_steps,
        config.trpo_damping,
        config.backtrack_ratio,
        config.max_backtracks,
        metric_fn=(
            (lambda p: learner.query_kl(p, supports, query, first_order=True))
            if config.trpo_fisher == "first_order"
            else None
        ),
    )
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(result.params[name])
    stats = {"outer_loss": result.loss_before, "inner_loss": math.nan}
    value_grads, stats["value_loss"] = learner.value_gradient(supports)
    if critic_optimizer is not None:
        head = {k: named[k] for k in ("value.weight", "value.bias")}
        _apply(critic_optimizer, head, value_grads, config.max_grad_norm)
    return stats, result.grad_norm, result.kl, result.accepted


def _apply(optimizer, named: dict, grads: dict, max_norm: float | None) -> float:
    """Write ``grads`` into ``.grad``, clip, step; returns the norm before clipping."""
    for name, p in named.items():
        p.grad = grads[name].detach().to(p.dtype).clone()
    params = list(named.values())
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def _post_update_kl(learner: MetaLearner, supports, query: TaskBatch) -> float:
    """Mean KL between the adapted policies that sampled the query and those the updated θ
    adapts to (first-order adaptation, no graph)."""
    if not isinstance(learner, MAML):
        return math.nan
    with torch.no_grad():
        return float(learner.query_kl(learner.params(), supports, query, first_order=True))
