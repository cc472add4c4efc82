"""The Ray backend: rollout workers as Ray actors, one contiguous slice of the task batch each.

``RayCollector(policy, family, RayConfig(...))`` starts ``num_workers`` :class:`RolloutWorker`
actors (joining the cluster at ``address``, or starting a Ray instance on this machine). A task
set's ``N`` tasks are split into contiguous slices (:func:`task_slices`);
each ``collect`` sends every worker the policy's current state (once, through the object store),
its slice of any per-task parameters and the generator state, and joins the returned slices in
task order.

**Same results as local.** Slice ``[a, b)`` resets its envs with the seeds the whole batch gives
those columns, carries task ids ``a..b-1``, and draws actions as rows of a draw for all ``N·B``
rows (``Rollout(sample_rows=...)``), so each worker advances its copy of the generator exactly
as the local collection advances the learner's; the learner takes over the (identical) state the
workers return. The only differences can come from floating-point arithmetic on smaller batches
(a matrix product over fewer rows may round differently); tests check bit equality on CPU.

**Faults.** A worker that dies mid-collection (its process killed, its node lost) fails only its
own slice: the actor is replaced by a fresh one and the slice re-collected from the same request
(same seeds, same generator state), so the joined trajectory is the one an undisturbed run
collects and nothing is counted twice: the lost attempt never returned anything. After
``max_failures`` losses of one slice the collection raises :class:`WorkerLost`.

**First-order adaptation on workers.** With ``adapt_on_workers`` and a first-order meta-gradient
(:meth:`first_order_meta_batch`), each worker runs support, inner loop and query for its slice and
returns its trajectories and its slice's mean meta-gradient; the learner averages them weighted
by slice size (the meta-gradient is a mean over tasks) and takes the outer step.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from metarl.collector import Collector, TaskSet
from metarl.meta.base import MetaGradient
from metarl.meta.train import MetaBatch
from metarl.trajectory import concat_batch

from .config import RayConfig
from .worker import RolloutWorker, SliceRequest

__all__ = [
    "INSTALL_HINT",
    "RayCollector",
    "WorkerLost",
    "connect_ray",
    "gather_retrying",
    "require_ray",
    "task_slices",
]

log = logging.getLogger("metarl.backends")

INSTALL_HINT = "pip install 'ssm-lifelong-metarl[ray]'  (or: pip install 'ray==2.60.0')"


class WorkerLost(RuntimeError):
    """A slice was lost to dying workers more often than ``ray.max_failures`` allows."""


def require_ray():
    """The ``ray`` module, or an ImportError naming the install command."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            f"backend: ray needs the Ray package, which is not installed here. Install it with: "
            f"{INSTALL_HINT}; or set backend: local"
        ) from e
    return ray


def connect_ray(config: RayConfig):
    """Check ``config``, then join the Ray instance it names (or the one already initialised in
    this process, or a new local one); returns ``(ray, started)``, ``started`` telling whether
    this call started it (and so whose ``ray.shutdown()`` it is)."""
    config.check()
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    kw: dict[str, Any] = dict(
        address=config.address, include_dashboard=False, log_to_driver=config.log_to_driver
    )
    if config.num_cpus is not None and config.address is None:
        kw["num_cpus"] = config.num_cpus
    ray.init(**kw)
    return ray, True


def gather_retrying(
    ray,
    n: int,
    submit: Callable[[int], Any],
    replace: Callable[[int], None],
    max_failures: int,
    what: str,
    failures: int = 0,
) -> tuple[list[Any], int]:
    """Results of ``submit(i)`` (an object ref) for ``i`` in ``0..n-1``, gathered as they finish.

    When the actor behind ``i`` dies, ``replace(i)`` gives it a fresh one and ``submit(i)`` runs
    again (the lost attempt never returned, so nothing is counted twice); more than
    ``max_failures`` losses of one ``i`` raise :class:`WorkerLost`. A ``FloatingPointError``
    raised in an actor (a diverged loss) is re-raised naming ``what`` and ``i``. Returns the
    results in order and ``failures`` plus the number of actors lost.
    """
    from ray.exceptions import ActorUnavailableError, RayActorError

    pending = {submit(i): (i, 0) for i in range(n)}
    results: list[Any] = [None] * n
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        i, failed = pending.pop(ref)
        try:
            results[i] = ray.get(ref)
        except FloatingPointError as e:  # Ray re-raises an actor's error as its own type
            raise FloatingPointError(f"{what} {i}: {e}") from e
        except (RayActorError, ActorUnavailableError) as e:
            failures += 1
            failed += 1
            if failed > max_failures:
                raise WorkerLost(
                    f"{what} {i} was lost to a dying actor {failed} times "
                    f"(ray.max_failures={max_failures}): {e}"
                ) from e
            log.warning(
                "metarl.backends: the actor of %s %d died (%s); replacing it and running its "
                "work again (attempt %d)",
                what,
                i,
                type(e).__name__,
                failed + 1,
            )
            replace(i)
            pending[submit(i)] = (i, failed)
    return results, failures


def task_slices(n_tasks: int, n_workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``min(n_tasks, n_workers)`` contiguous slices whose sizes differ by at
    most one (the larger ones first)."""
    if n_tasks < 1 or n_workers < 1:
        raise ValueError(f"need >= 1 task and worker, got {n_tasks} tasks, {n_workers} workers")
    k = min(n_tasks, n_workers)
    size, extra = divmod(n_tasks, k)
    out, start = [], 0
    for i in range(k):
        stop = start + size + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def _cpu_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}


class _RayTaskSet(TaskSet):
    def __init__(self, collector: RayCollector, tasks, envs_per_task, env_seed, rollout_kwargs):
        super().__init__(tasks, envs_per_task)
        self.collector = collector
        self.key = next(collector._keys)
        self.slices = task_slices(len(self.tasks), len(collector.workers))
        self.requests = [
            SliceRequest(
                self.key,
                self.tasks[a:b],
                a,
                len(self.tasks),
                self.envs_per_task,
                env_seed,
                dict(rollout_kwargs),
            )
            for a, b in self.slices
        ]

    def collect(self, num_steps, seed, params=None, generator=None, deterministic=False):
        c = self.collector
        if generator is None and not deterministic:
            raise ValueError(
                "the Ray backend samples with an explicit torch.Generator (pass generator=); "
                "torch's global generator cannot be shared with the workers"
            )
        state_ref = c.ray.put(_cpu_state(c.policy))
        gen_state = None if generator is None else generator.get_state()

        def call(worker, i):
            a, b = self.slices[i]
            p = None if params is None else {k: v[a:b].detach().cpu() for k, v in params.items()}
            return worker.collect.remote(
                self.requests[i], state_ref, num_steps, seed, p, gen_state, deterministic
            )

        results = c._run(len(self.slices), call)
        c._take_generator(generator, [r[1] for r in results])
        return concat_batch([r[0] for r in results]).to(c.device)

    def close(self) -> None:
        for worker in self.collector.workers:
            worker.release.remote(self.key)


class RayCollector(Collector):
    """Collects task batches on Ray actors; see the module docstring."""

    backend = "ray"

    def __init__(
        self,
        policy,
        family,
        config: RayConfig,
        vectorize: bool = True,
        meta_config: Any = None,
    ):
        super().__init__(policy, family, vectorize)
        ray, self.started_ray = connect_ray(config)
        self.ray, self.config = ray, config
        self.device = next(policy.parameters()).device
        self._actor = ray.remote(RolloutWorker)
        self._policy_ref = ray.put(copy.deepcopy(policy).cpu())
        self._family_ref = ray.put(family)
        self._meta_config = meta_config
        self.workers = [self._spawn() for _ in range(config.num_workers)]
        self.adapts_on_workers = bool(config.adapt_on_workers and meta_config is not None)
        self.failures = 0
        self._keys = itertools.count()

    # -- workers ----------------------------------------------------------------------------
    def _spawn(self):
        return self._actor.options(num_cpus=self.config.cpus_per_worker, max_restarts=0).remote(
            self._policy_ref,
            self._family_ref,
            self.config.torch_threads,
            self.vectorize,
            self._meta_config,
        )

    def _replace(self, i: int) -> None:
        try:
            self.ray.kill(self.workers[i], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.workers[i] = self._spawn()

    def worker_pids(self) -> list[int]:
        """The workers' process ids (tests kill them)."""
        return self.ray.get([w.pid.remote() for w in self.workers])

    def _run(self, n: int, call: Callable[[Any, int], Any]) -> list[Any]:
        """``call(worker_i, i)`` for slices ``0..n-1`` in parallel; a slice whose worker dies is
        re-run on a replacement worker (up to ``max_failures`` times)."""
        results, self.failures = gather_retrying(
            self.ray,
            n,
            lambda i: call(self.workers[i], i),
            self._replace,
            self.config.max_failures,
            "slice",
            self.failures,
        )
        return results

    @staticmethod
    def _take_generator(generator: torch.Generator | None, states: Sequence[Any]) -> None:
        if generator is None:
            return
        first = states[0]
        if any(not torch.equal(first, s) for s in states[1:]):
            raise RuntimeError("workers returned different generator states (a slicing bug)")
        generator.set_state(first)

    # -- interface --------------------------------------------------------------------------
    def open(self, tasks, envs_per_task, env_seed=None, **rollout_kwargs) -> TaskSet:
        return _RayTaskSet(self, tasks, envs_per_task, env_seed, rollout_kwargs)

    def first_order_meta_batch(
        self,
        learner,
        tasks: Sequence[Any],
        envs_per_task: int,
        num_steps: int,
        seed: int,
        iteration: int,
        generator: torch.Generator,
    ):
        """Support, first-order adaptation and query of every slice on its worker; returns the
        joined :class:`~metarl.meta.train.MetaBatch` (trajectories only) and the meta-batch's
        :class:`~metarl.meta.base.MetaGradient` (slice means weighted by slice size)."""
        task_set = _RayTaskSet(self, tasks, envs_per_task, None, {})
        n = len(task_set.tasks)
        state_ref = self.ray.put(_cpu_state(self.policy))
        lrs = {k: v.detach().cpu() for k, v in (getattr(learner, "lrs", None) or {}).items()}
        gen_state = generator.get_state()

        def call(worker, i):
            return worker.first_order_meta_batch.remote(
                task_set.requests[i], state_ref, lrs, num_steps, seed, iteration, gen_state
            )

        try:
            results = self._run(len(task_set.slices), call)
        finally:
            task_set.close()
        self._take_generator(generator, [r[2] for r in results])
        weights = [(b - a) / n for a, b in task_set.slices]

        def mix(dicts):
            return {
                k: sum(w * d[k].to(self.device) for w, d in zip(weights, dicts)) for k in dicts[0]
            }

        mgs = [r[1] for r in results]
        grads = mix([m.grads for m in mgs])
        lr_grads = None if mgs[0].lr_grads is None else mix([m.lr_grads for m in mgs])
        stats = {k: float(sum(w * m.stats[k] for w, m in zip(weights, mgs))) for k in mgs[0].stats}
        batches = [r[0] for r in results]
        batch = MetaBatch(
            concat_batch([b.pre for b in batches]).to(self.device),
            concat_batch([b.post for b in batches]).to(self.device),
            None,
            None,
            sum(b.steps for b in batches),
        )
        return batch, MetaGradient(grads, lr_grads, stats)

    def stats(self) -> dict[str, Any]:
        return {"backend": "ray", "workers": len(self.workers), "worker_failures": self.failures}

    def close(self) -> None:
        for w in self.workers:
            try:
                self.ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False
