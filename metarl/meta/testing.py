"""Reference implementations to check the meta-learners against (tests and benchmarks only).

:func:`higher_meta_gradient` is the textbook way to write second-order MAML in PyTorch: a Python
loop over tasks, each unrolling its inner SGD steps with ``higher``'s differentiable optimiser
and back-propagating the query loss with ordinary autograd. It computes the same quantity as
:meth:`metarl.meta.MAML.meta_gradient` (fixed learning rate, no multi-step loss) by an
independent route. ``higher`` is imported only when it is called; the engine never uses it.
"""

from __future__ import annotations

import abc
import copy

import torch
from torch import Tensor, nn

from .batch import TaskBatch, select_task
from .surrogates import inner_loss, outer_loss


def higher_compatible_copy(policy: nn.Module) -> nn.Module:
    """A deep copy of ``policy`` that ``higher`` can patch.

    ``higher`` builds a subclass of each module's class with bases ``(cls, _MonkeyPatchBase)``,
    where ``_MonkeyPatchBase(ABC, Module)``; for ``ssm`` layers (``SequenceLayer(Module, ABC)``)
    that MRO is inconsistent. The copy's modules get flattened classes with the same methods and
    ``nn.Module`` as the only base. (Valid because no ssm method uses ``super()`` after init.)
    """
    clone = copy.deepcopy(policy)
    for m in clone.modules():
        cls = type(m)
        if abc.ABC not in cls.__mro__:
            continue
        namespace: dict = {}
        for klass in reversed(cls.__mro__):
            if klass in (object, abc.ABC, nn.Module):
                continue
            namespace.update(
                {k: v for k, v in vars(klass).items() if k not in ("__dict__", "__weakref__")}
            )
        for k in ("__abstractmethods__", "_abc_impl"):
            namespace.pop(k, None)
        m.__class__ = type(cls.__name__, (nn.Module,), namespace)
    return clone


def higher_meta_gradient(
    policy: nn.Module,
    supports: TaskBatch,
    query: TaskBatch,
    inner_lr: float,
    inner_steps: int,
    inner_objective: str = "lvc",
    outer_objective: str = "vpg",
) -> dict[str, Tensor]:
    """MAML's meta-gradient of the mean query loss over the stacked tasks, by a Python loop over
    tasks with ``higher.innerloop_ctx`` (SGD inner steps on ``supports``); keyed by name."""
    import higher

    clone = higher_compatible_copy(policy)
    named = [(n, p) for n, p in clone.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    for p in params:
        p.grad = None
    n_tasks = supports.n_tasks
    # higher re-creates every module; the policy's norms stay composite (ssm.norm) there too.
    for i in range(n_tasks):
        sup, qry = select_task(supports, i), select_task(query, i)
        opt = torch.optim.SGD(params, lr=inner_lr)
        with higher.innerloop_ctx(clone, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(inner_steps):
                diffopt.step(inner_loss(fmodel, None, sup, inner_objective))
            loss = outer_loss(fmodel, None, qry, outer_objective) / n_tasks
            loss.backward()
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in named}


def tiny_policy(kind: str = "gru", family: str = "nav2d", seed: int = 0, **family_kw):
    """A small float64 policy and its task family (for tests and smoke runs)."""
    import ssm
    from metarl.tasks import make_family

    fam = make_family(family, **family_kw)
    torch.manual_seed(seed)
    kw = {"d_state": 4} if kind in ("s4d", "s5", "mamba") else None
    policy = ssm.SequencePolicy(
        fam.observation_space,
        fam.action_space,
        kind=kind,
        d_model=8,
        n_layers=1,
        encoder_hidden=8,
        layer_kwargs=kw,
    ).double()
    return policy, fam


def tiny_meta_batch(learner, family, n_tasks: int = 3, envs_per_task: int = 2, seed: int = 0):
    """Support trajectories sampled with θ and query trajectories sampled with each task's
    adapted parameters, as :class:`TaskBatch` es stacked over ``n_tasks`` training tasks."""
    from metarl.task_rollout import collect_tasks

    tasks = family.sample(n_tasks, seed=seed)
    steps = family.max_episode_steps
    vec = learner.vectorize
    pre = collect_tasks(learner.policy, family, tasks, envs_per_task, steps, seed)
    supports = learner.prepare(pre, n_tasks)
    adapted = learner.adapt_tasks(None, supports)
    post = collect_tasks(
        learner.policy, family, tasks, envs_per_task, steps, seed + 1, adapted, vectorize=vec
    )
    return supports, learner.prepare(post, n_tasks)
