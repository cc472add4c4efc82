"""Per-task batches: trajectories with their advantages, stacked over a meta-batch of tasks.

A rollout over ``N`` tasks with ``B`` envs per task gives one ``(T, N·B)`` :class:`Trajectory`
whose sub-env ``i·B + k`` runs task ``i`` (see :meth:`TaskFamily.make_vector_env`).
:func:`task_batches` turns it into a :class:`TaskBatch` whose every tensor has a leading task axis,
``(N, T, B, ...)``, so that meta-learners can ``vmap`` their per-task inner loop over it.

Advantages are data (computed once, without gradient) with one of two baselines:

* ``"linear"``: the MAML-RL baseline (Duan et al., 2016; used by Finn et al., 2017 and ProMP):
  per task, a ridge regression of the discounted return-to-go on
  ``[o, o², τ, τ², τ³, 1]`` (``τ`` = step within the episode / 100). Episode ends, truncations
  included, are terminal (the finite-horizon convention of MAML-RL).
* ``"critic"``: the policy's value head as recorded while acting, with GAE and time-limit
  bootstrapping exactly as in PPO.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from metarl.objectives import gae
from metarl.trajectory import Trajectory

Baseline = Literal["linear", "critic"]
BASELINES = ("linear", "critic")


class TaskBatch(NamedTuple):
    """One task's (or, stacked, a meta-batch's) trajectories and their advantage estimates.

    Shapes ``(T, B, ...)`` for one task; with a leading task axis ``(N, T, B, ...)`` when stacked.
    """

    traj: Trajectory
    advantages: Tensor
    returns: Tensor

    @property
    def n_tasks(self) -> int:
        """Size of the leading task axis (only meaningful for a stacked batch)."""
        return int(self.advantages.shape[0])


def stack_tasks(traj: Trajectory, n_tasks: int) -> Trajectory:
    """``(T, N·B, ...)`` -> every field with a leading task axis ``(N, T, B, ...)``."""
    if n_tasks < 1 or traj.B % n_tasks:
        raise ValueError(f"a batch of {traj.B} sequences cannot be split into {n_tasks} tasks")
    per = traj.B // n_tasks
    parts = [traj[list(range(i * per, (i + 1) * per))] for i in range(n_tasks)]
    return pytree.tree_map(lambda *xs: torch.stack(xs), *parts)


def select_task(tree, i: int):
    """Task ``i`` of a stacked pytree (a :class:`TaskBatch`, parameter dict, ...)."""
    return pytree.tree_map(lambda x: x[i], tree)


def _flat(x: Tensor) -> Tensor:  # (N, T, B) -> (T, N·B)
    n, t, b = x.shape[:3]
    return x.movedim(0, 1).reshape(t, n * b, *x.shape[3:])


def _tasks(x: Tensor, n: int) -> Tensor:  # (T, N·B) -> (N, T, B)
    t, nb = x.shape[:2]
    return x.reshape(t, n, nb // n, *x.shape[2:]).movedim(1, 0)


def steps_in_episode(resets: Tensor) -> Tensor:
    """``(…, T, B)`` bool resets -> steps since the last reset (0 at a reset)."""
    t = resets.shape[-2]
    idx = torch.arange(t, device=resets.device).reshape(t, 1).expand_as(resets)
    last = torch.cummax(torch.where(resets, idx, torch.zeros_like(idx)), dim=-2).values
    return idx - last


def linear_baseline(stacked: Trajectory, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Per-task least-squares fit of ``returns (N, T, B)`` on time and observation features;
    returns the fitted values ``(N, T, B)``."""
    obs = stacked.obs
    if not obs.is_floating_point():
        raise ValueError(
            "the linear baseline needs vector (float) observations; use baseline='critic'"
        )
    n, t, b = returns.shape
    o = obs.reshape(n, t, b, -1).to(returns.dtype).clamp(-10, 10)
    tau = steps_in_episode(stacked.resets).to(returns.dtype)[..., None] / 100.0
    x = torch.cat([o, o * o, tau, tau**2, tau**3, torch.ones_like(tau)], dim=-1)  # (N T B F)
    x = x.reshape(n, t * b, -1)
    xtx = x.transpose(1, 2) @ x  # (N F F)
    eye = torch.eye(xtx.shape[-1], dtype=x.dtype, device=x.device)
    scale = xtx.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1.0)[:, None, None]
    w = torch.linalg.solve(xtx + reg * scale * eye, x.transpose(1, 2) @ returns.reshape(n, -1, 1))
    return (x @ w).reshape(n, t, b)


def _normalize_per_task(adv: Tensor, eps: float = 1e-8) -> Tensor:
    flat = adv.reshape(adv.shape[0], -1)
    if flat.shape[1] < 2:
        raise ValueError("advantage normalisation needs at least 2 samples per task")
    mean, std = flat.mean(1), flat.std(1)
    shape = (-1,) + (1,) * (adv.dim() - 1)
    return (adv - mean.reshape(shape)) / (std.reshape(shape) + eps)


@torch.no_grad()
def task_batches(
    traj: Trajectory,
    n_tasks: int,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize: bool = True,
    baseline: Baseline = "linear",
) -> TaskBatch:
    """Split a ``(T, N·B)`` rollout into ``n_tasks`` tasks and estimate advantages per task.

    Returns a :class:`TaskBatch` with a leading task axis. ``normalize`` standardises the
    advantages within each task.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    stacked = stack_tasks(traj, n_tasks)
    values = traj.values
    if baseline == "critic":
        adv, ret = gae(
            traj.rewards,
            values,
            traj.terminated,
            traj.truncated,
            traj.bootstrap_values,
            traj.last_value,
            gamma,
            gae_lambda,
        )
        adv, ret = _tasks(adv, n_tasks), _tasks(ret, n_tasks)
    else:
        dones, zeros = traj.dones, torch.zeros_like(traj.rewards)
        no_cut = torch.zeros_like(traj.truncated)
        _, rtg = gae(traj.rewards, zeros, dones, no_cut, zeros, zeros[0], gamma, 1.0)
        ret = _tasks(rtg, n_tasks)
        fitted = _flat(linear_baseline(stacked, ret))
        adv, _ = gae(traj.rewards, fitted, dones, no_cut, zeros, zeros[0], gamma, gae_lambda)
        adv = _tasks(adv, n_tasks)
    if normalize:
        adv = _normalize_per_task(adv)
    return TaskBatch(stacked, adv, ret)


def task_batch(traj: Trajectory, **kwargs) -> TaskBatch:
    """:func:`task_batches` for a rollout of a single task, without the task axis."""
    return select_task(task_batches(traj, 1, **kwargs), 0)
