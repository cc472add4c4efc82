"""Meta-training and adaptation evaluation for the gradient meta-learners, in one place.

One outer iteration (``train_meta``):

1. sample ``meta_batch_size`` training tasks;
2. collect support trajectories with θ (``episodes_per_task`` envs per task), or, with
   ``resample_support``, a fresh batch with each ``φ_k`` before inner step ``k``;
3. adapt every task (one ``vmap`` over tasks) and collect query trajectories, each task acting
   with its own adapted parameters;
4. take the outer step: Adam/SGD on the meta-gradient (plus the learned inner lrs' Adam), or a
   TRPO step on the query surrogate with a KL bound (MAML-TRPO).

Each iteration logs a :class:`MetaIterationStats` row: returns before and after adaptation, the
losses, the KL between the adapted policies before and after the update, the meta-gradient norm
and steps per second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from metarl.tasks import Task, TaskFamily
from ssm.policy import SequencePolicy

from . import functional as F
from .base import probe_second_order
from .batch import TaskBatch
from .collect import collect_tasks
from .config import MetaConfig
from .learners import IMAML, MAML, MetaLearner, Reptile, make_learner
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
    """mean final-step success of the support episodes"""
    post_success: float
    """mean final-step success of the query episodes"""
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

    def as_dict(self) -> dict:
        return asdict(self)


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def _inner_lr_mean(learner: MetaLearner) -> float:
    lrs = learner.inner_lrs()
    if isinstance(lrs, float):
        return lrs
    return float(torch.cat([v.detach().reshape(-1) for v in lrs.values()]).mean())


class _Collector:
    """Collects meta-batches for one run: seeds derive from the run seed and the iteration."""

    def __init__(self, policy, family, config: MetaConfig, generator: torch.Generator):
        self.policy, self.family, self.config, self.gen = policy, family, config, generator
        self.num_steps = config.num_steps or family.max_episode_steps
        self.steps = 0

    def __call__(self, tasks: Sequence[Task], seed: int, params=None):
        traj = collect_tasks(
            self.policy,
            self.family,
            tasks,
            self.config.episodes_per_task,
            self.num_steps,
            seed,
            params=params,
            generator=self.gen,
            vectorize=self.config.vectorize,
        )
        self.steps += traj.T * traj.B
        return traj


def train_meta(
    policy: SequencePolicy,
    family: TaskFamily,
    config: MetaConfig,
    log: Callable[[MetaIterationStats], None] | None = None,
) -> list[MetaIterationStats]:
    """Meta-train ``policy`` on ``family``'s train tasks with the learner ``config.algo`` names;
    returns the per-iteration stats (the learner is built with :func:`make_learner`)."""
    learner = make_learner(policy, config)
    gen = torch.Generator().manual_seed(config.seed)
    collect = _Collector(policy, family, config, gen)
    named = learner.named_parameters()
    optimizer: torch.optim.Optimizer | None = None
    if config.outer == "adam":
        optimizer = torch.optim.Adam(named.values(), lr=config.outer_lr)
    elif config.outer == "sgd":
        optimizer = torch.optim.SGD(named.values(), lr=config.outer_lr)
    elif config.baseline == "critic":  # trpo: the critic head gets its own Adam
        head = [named["value.weight"], named["value.bias"]]
        optimizer = torch.optim.Adam(head, lr=config.outer_lr)
    lr_optimizer = None
    if isinstance(learner, MAML) and learner.lrs is not None:
        lr_optimizer = torch.optim.Adam(learner.lrs.values(), lr=config.lr_learning_rate)
    n, k_steps = config.meta_batch_size, config.inner_steps
    history: list[MetaIterationStats] = []
    start = time.perf_counter()
    for it in range(1, config.iterations + 1):
        seed = config.seed * 1_000_003 + it * 101
        tasks = family.sample(n, split="train", seed=seed)
        first_order = getattr(learner, "first_order", True) or it <= config.first_order_iters
        theta = learner.params()

        # -- support and query --------------------------------------------------------------
        pre = collect(tasks, seed)
        supports: TaskBatch | list[TaskBatch] = learner.prepare(pre, n)
        if config.resample_support:
            supports, phi = [supports], None
            for k in range(1, k_steps):
                phi = learner.adapt_tasks(theta, supports, steps=k)
                supports.append(learner.prepare(collect(tasks, seed + k, phi), n))
        adapted = learner.adapt_tasks(theta, supports)
        post = collect(tasks, seed + k_steps, adapted)
        query = learner.prepare(post, n)

        # -- outer step ---------------------------------------------------------------------
        if config.outer == "trpo":
            stats, grad_norm, kl, accepted = _trpo_update(
                learner, optimizer, supports, query, first_order, it, config
            )
        else:
            assert optimizer is not None
            mg = learner.meta_gradient(supports, query, first_order=first_order, iteration=it)
            stats, accepted = mg.stats, None
            grad_norm = _apply(optimizer, named, mg.grads, config.max_grad_norm)
            if lr_optimizer is not None and mg.lr_grads is not None:
                _apply(lr_optimizer, learner.lrs, mg.lr_grads, config.max_grad_norm)
            kl = _post_update_kl(learner, supports, query)
        row = MetaIterationStats(
            iteration=it,
            global_step=collect.steps,
            pre_return=_mean(pre.episode_returns()),
            post_return=_mean(post.episode_returns()),
            pre_success=_mean(pre.episode_successes()),
            post_success=_mean(post.episode_successes()),
            outer_loss=stats.get("outer_loss", math.nan),
            inner_loss=stats.get("inner_loss", math.nan),
            value_loss=stats.get("value_loss", math.nan),
            kl=kl,
            grad_norm=grad_norm,
            first_order=bool(first_order),
            vectorized=learner.vectorize,
            trpo_accepted=accepted,
            inner_lr_mean=_inner_lr_mean(learner),
            steps_per_second=collect.steps / (time.perf_counter() - start),
        )
        checked = ("grad_norm",) if isinstance(learner, Reptile) else ("grad_norm", "outer_loss")
        for name in checked:
            if not math.isfinite(getattr(row, name)):
                raise FloatingPointError(f"meta-training: {name} is not finite at iteration {it}")
        history.append(row)
        if log is not None:
            log(row)
    return history


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


def adapt_eval(
    policy: SequencePolicy,
    family: TaskFamily,
    learner: MetaLearner,
    tasks: Sequence[Task],
    steps: int = 3,
    episodes: int = 20,
    seeds: Sequence[int] = (0,),
    num_steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Returns and success before adaptation and after each of ``1..steps`` inner steps.

    Per seed, all ``tasks`` at once (one ``vmap`` over tasks), as in Finn et al.'s evaluation:
    ``φ_0 = θ``; for ``s = 0..steps``: sample ``episodes`` episodes per task with ``φ_s`` and
    record their mean return and success; then ``φ_{s+1}`` is one inner step of the learner on
    exactly those episodes. The learner's inner lr (learned lrs: the one of step ``s``) is used.

    Returns ``returns`` and ``success`` of shape ``(len(seeds), len(tasks), steps + 1)``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not tasks:
        raise ValueError("adapt_eval needs at least one task")
    n = len(tasks)
    length = num_steps or family.max_episode_steps
    returns = np.full((len(seeds), n, steps + 1), np.nan)
    success = np.full((len(seeds), n, steps + 1), np.nan)
    theta = learner.params()
    for si, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        phi = None
        for s in range(steps + 1):
            traj = collect_tasks(
                policy,
                family,
                tasks,
                episodes,
                length,
                seed * 7919 + s,
                phi,
                generator=gen,
                vectorize=learner.vectorize,
            )
            returns[si, :, s], success[si, :, s] = _per_task_episode_stats(traj, n)
            if s == steps:
                break
            batch = learner.prepare(traj, n)
            start = F.detach(
                {k: v.expand(n, *v.shape) for k, v in theta.items()} if phi is None else phi
            )

            def one(p, b, s=s):
                anchor = theta if isinstance(learner, IMAML) else None
                return F.detach(learner.inner_step(p, b, s, anchor=anchor))

            with torch.no_grad():
                phi = learner._map(one, (start, batch), (0, 0))
    return {"returns": returns, "success": success, "steps": np.arange(steps + 1)}


def _per_task_episode_stats(traj, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    per = traj.B // n_tasks
    rets, succ = np.zeros(n_tasks), np.zeros(n_tasks)
    for i in range(n_tasks):
        sub = traj[list(range(i * per, (i + 1) * per))]
        rets[i] = _mean(sub.episode_returns())
        succ[i] = _mean(sub.episode_successes())
    return rets, succ
