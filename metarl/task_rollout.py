"""Task-batched rollouts: every task's envs in one vector env, each task acting with its own
(adapted) parameters.

Sub-env ``i·B + k`` runs task ``i`` (``B`` envs per task). With shared parameters the plain
:class:`Rollout` acts (and may use the fused acting kernels). With one parameter set per task,
:class:`TaskBatchedPolicy` wraps the policy: its ``step`` reshapes the ``N·B`` rows to ``(N, B)``
and runs ``vmap`` over tasks of ``functional_call(policy.step)`` with the stacked parameters, so
one call acts for all tasks, with no per-task module copies and no Python loop over tasks.

Part of the rollout engine, below the meta-learners (:mod:`metarl.meta`) and the collectors
(:mod:`metarl.collector`, :mod:`metarl.backends`) that call it. Per-task parameters are plain
``{name: (N, *shape)}`` dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metarl.rollout import Rollout
from metarl.tasks import Task, TaskFamily
from metarl.trajectory import Trajectory
from ssm.backend import log_once
from ssm.policy import PolicyOutput, PolicyState, SequencePolicy


class _Step(nn.Module):
    """``forward`` = ``policy.step``, so ``functional_call`` can run the step with given params."""

    def __init__(self, policy: SequencePolicy):
        super().__init__()
        self.policy = policy

    def forward(self, *args):
        return self.policy.step(*args)


class TaskBatchedPolicy(nn.Module):
    """Acts for ``n_tasks`` tasks at once, rows ``[i·B, (i+1)·B)`` with ``params[name][i]``.

    ``vectorize=False`` (or a failing ``vmap``, with a logged warning) loops over tasks instead.
    Offers what :class:`Rollout` uses of a policy: ``initial_state``, ``step``, ``sample``,
    ``mode``, ``log_prob``, ``entropy`` and ``in_context``. The action head has no parameters of
    its own at sampling time, so sampling runs on the whole batch with the base policy's head.
    """

    def __init__(
        self,
        policy: SequencePolicy,
        params: dict[str, Tensor],
        envs_per_task: int,
        vectorize: bool = True,
    ):
        super().__init__()
        self.vectorize = vectorize
        self.policy = policy
        self.n_tasks = int(next(iter(params.values())).shape[0])
        self.envs_per_task = int(envs_per_task)
        self.in_context = bool(getattr(policy, "in_context", False))
        names = dict(policy.named_parameters())
        for name, value in params.items():
            if name not in names:
                raise ValueError(f"{name!r} is not a parameter of the policy")
            if tuple(value.shape) != (self.n_tasks, *names[name].shape):
                raise ValueError(
                    f"params[{name!r}] must be stacked over tasks: ({self.n_tasks}, "
                    f"{', '.join(map(str, names[name].shape))}), got {tuple(value.shape)}"
                )
        self._stacked = {f"policy.{k}": v.detach() for k, v in params.items()}
        object.__setattr__(self, "_stepper", _Step(policy))  # not a registered submodule

    def initial_state(self, batch_size: int, device=None, dtype=None) -> PolicyState:
        return self.policy.initial_state(batch_size, device, dtype)

    def step(
        self,
        obs: Tensor,
        state: PolicyState | None,
        reset: Tensor | None = None,
        prev_action: Tensor | None = None,
        prev_reward: Tensor | None = None,
        prev_done: Tensor | None = None,
    ) -> tuple[PolicyOutput, PolicyState]:
        n, rows = self.n_tasks, obs.shape[0]
        if rows != n * self.envs_per_task:
            raise ValueError(
                f"TaskBatchedPolicy acts on exactly {n} x {self.envs_per_task} rows, got {rows}"
            )
        if state is None:
            state = self.initial_state(rows, obs.device, next(self.parameters()).dtype)
        if reset is None:
            reset = torch.zeros(rows, dtype=torch.bool, device=obs.device)

        def split(x):
            return None if x is None else x.reshape(n, self.envs_per_task, *x.shape[1:])

        def merge(x):
            return x.reshape(n * self.envs_per_task, *x.shape[2:])

        ctx = (prev_action, prev_reward, prev_done) if self.in_context else ()

        def one(p, o, s, r, *c):
            return functional_call(self._stepper, p, (o, s, r, *c))

        args = (self._stacked, split(obs), pytree.tree_map(split, state), split(reset))
        args += tuple(split(c) for c in ctx)
        if self.vectorize:
            try:
                out, new_state = vmap(one)(*args)
            except RuntimeError as e:
                log_once(
                    f"meta-act-vmap-{type(e).__name__}",
                    "metarl.task_rollout: vmap over tasks failed while acting "
                    f"({type(e).__name__}: {e}); acting with a Python loop over tasks instead",
                    logging.WARNING,
                )
                self.vectorize = False
        if not self.vectorize:
            outs = [one(*[pytree.tree_map(lambda x, i=i: x[i], a) for a in args]) for i in range(n)]
            out, new_state = pytree.tree_map(lambda *xs: torch.stack(xs), *outs)
        return PolicyOutput(merge(out.dist_params), merge(out.value)), pytree.tree_map(
            merge, new_state
        )

    def log_prob(self, out: PolicyOutput, action: Tensor) -> Tensor:
        return self.policy.log_prob(out, action)

    def entropy(self, out: PolicyOutput) -> Tensor:
        return self.policy.entropy(out)

    def sample(self, out: PolicyOutput, generator: torch.Generator | None = None) -> Tensor:
        return self.policy.sample(out, generator)

    def mode(self, out: PolicyOutput) -> Tensor:
        return self.policy.mode(out)


class _TaskBatchedRollout(Rollout):
    """A :class:`Rollout` whose truncation bootstrap runs the whole batch through ``step``.

    The base engine evaluates ``V(final_obs)`` on the truncated rows only; a task-batched
    policy must see all ``N·B`` rows to know which task each one belongs to, so this evaluates
    every row (the final observation where truncated, the current one elsewhere) and keeps the
    truncated rows.
    """

    def _bootstrap_values(self, info, truncated, state, action, reward) -> Tensor:
        boot = torch.zeros(self.num_envs, dtype=self.dtype, device=self.device)
        if not truncated.any():
            return boot
        rows = np.flatnonzero(truncated)
        obs = np.array(self._obs, copy=True)
        obs[rows] = np.stack(info["final_obs"][rows])
        ctx = self._context(
            action, reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        )
        out, _ = self.policy.step(self._obs_tensor(obs), state, **ctx)
        mask = torch.as_tensor(truncated, device=self.device)
        return torch.where(mask, out.value, boot)


def collect_tasks(
    policy: SequencePolicy,
    family: TaskFamily,
    tasks: Sequence[Task],
    envs_per_task: int,
    num_steps: int,
    seed: int,
    params: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    vectorize: bool = True,
    envs: gym.vector.VectorEnv | None = None,
    task_offset: int = 0,
    total_tasks: int | None = None,
    **rollout_kwargs,
) -> Trajectory:
    """A ``(num_steps, N·B)`` trajectory of ``tasks`` (``B = envs_per_task``), acting with the
    policy's own parameters, or with ``params`` stacked over tasks (task ``i`` uses
    ``params[name][i]``). Task ids are the task's position in ``tasks``.

    ``envs``: a vector env already built for exactly these tasks
    (``family.make_vector_env(tasks, envs_per_task)``), reused and left open; support and query of
    one meta-batch share one (building Meta-World envs costs ~0.2 s each). Every sub-env is reset
    with ``seed + its index`` either way, so reusing one gives the same trajectories.

    ``task_offset``/``total_tasks``: ``tasks`` are tasks ``[task_offset, task_offset + n)`` of a
    meta-batch of ``total_tasks`` collected in slices (the Ray backend). Task ids, env seeds and
    action samples are then exactly those these rows get when the whole batch is collected at
    once (the generator advances as for the whole batch). ``rollout_kwargs`` go to
    :class:`Rollout` (e.g. ``reset_state="trial"``, ``episodes_per_trial`` for RL²)."""
    n = len(tasks)
    total = n if total_tasks is None else int(total_tasks)
    if not 0 <= task_offset <= total - n:
        raise ValueError(
            f"tasks [{task_offset}, {task_offset + n}) are not a slice of {total} tasks"
        )
    row0 = task_offset * envs_per_task
    device = next(policy.parameters()).device
    owned = envs is None
    if owned:
        envs = family.make_vector_env(list(tasks), envs_per_task=envs_per_task, seed=seed + row0)
    elif envs.num_envs != n * envs_per_task:
        raise ValueError(
            f"envs has {envs.num_envs} sub-envs; {n} tasks x {envs_per_task} envs need "
            f"{n * envs_per_task}"
        )
    task_ids = torch.arange(task_offset, task_offset + n).repeat_interleave(envs_per_task)
    kw = dict(generator=generator, task_ids=task_ids, device=device, **rollout_kwargs)
    if total != n:
        kw["sample_rows"] = (row0, total * envs_per_task)
    try:
        if params is None:
            rollout = Rollout(policy, envs, **kw)
        else:
            actor = TaskBatchedPolicy(policy, params, envs_per_task, vectorize)
            rollout = _TaskBatchedRollout(actor, envs, **kw)
        rollout.new_trial(seed=seed + row0)
        return rollout.collect(num_steps, deterministic=deterministic)
    finally:
        if owned:
            envs.close()


def episode_success_any(traj: Trajectory) -> list[float]:
    """For each episode that ended within ``traj`` (in order of its end step): 1.0 if
    ``success`` held at any of its steps in this trajectory, else 0.0 (Meta-World's criterion)."""
    running = torch.zeros(traj.B, dtype=torch.bool, device=traj.success.device)
    dones, out = traj.dones, []
    for t in range(traj.T):
        running = running | traj.success[t].bool()
        out.extend(running[dones[t]].double().tolist())
        running = running & ~dones[t]
    return out
