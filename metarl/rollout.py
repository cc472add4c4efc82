"""The rollout engine: steps a recurrent sequence policy through a gymnasium ``VectorEnv``.

The environments must auto-reset in ``SAME_STEP`` mode: when sub-env ``i`` ends an episode at step
``t``, the observation it returns is already the first observation of the next episode, and the
last observation of the finished one is in ``info["final_obs"][i]`` (mask ``info["_final_obs"]``).
So every observation the engine receives is one the policy must act on, and no step is wasted on
a dummy "reset" transition.

Per step ``t`` (``s_t`` the policy state, ``c_t = (a_{t-1}, r_{t-1}, d_{t-1})`` the in-context
inputs)::

    s_t ← 0 where resets[t]                      (episode start, or trial start in trial mode)
    π_t, V_t, s_{t+1} = policy.step(o_t, s_t, c_t)
    a_t ~ π_t;   o_{t+1}, r_t, term_t, trunc_t = env.step(clip(a_t))
    bootstrap_t = V(final_obs_t | s_{t+1}, c = (a_t, r_t, 0))   where trunc_t and not term_t

The bootstrap value is what makes time-limit truncation correct: the value that continues a cut-off
episode is the value of its final observation, under the state the episode had reached, not the
value of the next episode's first observation (``o_{t+1}``) or of a reset state.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from ssm.policy import PolicyOutput, PolicyState, SequencePolicy, is_image_space

from .trajectory import Trajectory

ResetState = Literal["episode", "trial"]


class Rollout:
    """Collects :class:`Trajectory` batches from ``envs`` with ``policy``, one call after another.

    The engine keeps the current observations, the policy state and the in-context inputs between
    :meth:`collect` calls, so successive calls continue the same episodes seamlessly (as PPO
    collects successive batches).

    Args:
        policy: a :class:`ssm.SequencePolicy` (or anything with its ``step``/``sample`` API).
        envs: a gymnasium ``VectorEnv`` with ``autoreset_mode=AutoresetMode.SAME_STEP``.
        in_context: feed the previous action, reward and done to the policy (RL²); defaults to
            ``policy.in_context``.
        reset_state: ``"episode"`` zeroes the policy state at every episode start; ``"trial"`` keeps
            it across the episodes of a trial and zeroes it only at a trial start.
        episodes_per_trial: in ``"trial"`` mode, a trial ends after this many episodes of a
            sub-env; ``None`` means trials end only when the caller calls :meth:`new_trial`.
        device: where the recorded tensors live (the policy must already be there).
        generator: the random generator for action sampling (``None``: torch's global one).
        seed: seeds ``envs.reset`` on the first :meth:`collect` (if :meth:`new_trial` was not
            called first).
        task_ids: ``(B,)`` task index of each sub-env, stored in every trajectory (default 0).
        sample_rows: ``(offset, total)``: these ``B`` sub-envs are rows ``[offset, offset + B)`` of
            a batch of ``total`` rows collected elsewhere in slices (the Ray backend). Actions are
            then drawn as those rows of a draw for all ``total`` rows, so a slice consumes the
            generator exactly as the whole batch does and samples exactly its actions.
    """

    def __init__(
        self,
        policy: SequencePolicy,
        envs: gym.vector.VectorEnv,
        in_context: bool | None = None,
        reset_state: ResetState = "episode",
        episodes_per_trial: int | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        task_ids: Tensor | list[int] | None = None,
        sample_rows: tuple[int, int] | None = None,
        fused_step: bool = False,
    ):
        if reset_state not in ("episode", "trial"):
            raise ValueError(f"reset_state must be 'episode' or 'trial', got {reset_state!r}")
        if episodes_per_trial is not None and episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1 or None, got {episodes_per_trial}")
        policy_in_context = bool(getattr(policy, "in_context", False))
        self.in_context = policy_in_context if in_context is None else bool(in_context)
        if self.in_context != policy_in_context:
            raise ValueError(
                f"in_context={in_context} but the policy was built with "
                f"in_context={policy_in_context}"
            )
        self.policy, self.reset_state, self.episodes_per_trial = (
            policy,
            reset_state,
            episodes_per_trial,
        )
        self.device, self.generator, self.seed = torch.device(device), generator, seed
        self.dtype = next(policy.parameters()).dtype
        # fused_step: act through the fused C++ policy step (ssm.fast_step; the same outputs as
        # policy.step to float rounding, ~1e-7, so sampled trajectories differ at that level; off
        # by default so that runs stay bit-identical to the reference path)
        self._stepper: Any = policy
        if fused_step:
            from ssm.fast_step import FusedPolicyStep

            self._stepper = FusedPolicyStep(policy)
        self._set_envs(envs)
        self.task_ids = self._task_ids(task_ids)
        self.sample_rows: tuple[int, int] | None = None
        if sample_rows is not None:
            offset, total = self.sample_rows = (int(sample_rows[0]), int(sample_rows[1]))
            if offset < 0 or offset + self.num_envs > total:
                raise ValueError(
                    f"sample_rows=(offset={offset}, total={total}) must hold rows "
                    f"[offset, offset + {self.num_envs}) of the batch"
                )
        self._obs: np.ndarray | None = None  # set by new_trial

    # -- setup ----------------------------------------------------------------------------------
    def _set_envs(self, envs: gym.vector.VectorEnv) -> None:
        mode = envs.metadata.get("autoreset_mode", getattr(envs, "autoreset_mode", None))
        if mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(
                "the rollout engine needs envs built with "
                f"autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, got {mode}"
            )
        self.envs, self.num_envs = envs, int(envs.num_envs)
        self.obs_space, self.action_space = envs.single_observation_space, envs.single_action_space
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            self._action_shape, self._action_dtype = (), torch.int64
        elif isinstance(space, gym.spaces.MultiDiscrete):
            self._action_shape, self._action_dtype = tuple(space.shape), torch.int64
        elif isinstance(space, gym.spaces.Box):
            self._action_shape, self._action_dtype = tuple(space.shape), self.dtype
        else:
            raise ValueError(f"unsupported action space {space}")

    def _task_ids(self, task_ids: Tensor | list[int] | None) -> Tensor:
        if task_ids is None:
            return torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        ids = torch.as_tensor(task_ids, dtype=torch.int64, device=self.device)
        if ids.shape != (self.num_envs,):
            raise ValueError(f"task_ids must have shape ({self.num_envs},), got {tuple(ids.shape)}")
        return ids

    def new_trial(
        self,
        seed: int | None = None,
        options: dict | None = None,
        envs: gym.vector.VectorEnv | None = None,
        task_ids: Tensor | list[int] | None = None,
    ) -> None:
        """Start a fresh trial in every sub-env: reset the envs, zero the policy state, the
        in-context inputs and the episode counters. To switch tasks, pass the new tasks' ``envs``
        (or reset ``options`` the envs understand) and their ``task_ids``."""
        if envs is not None:
            self._set_envs(envs)
        if task_ids is not None or envs is not None:
            self.task_ids = self._task_ids(task_ids)
        B = self.num_envs
        self._obs, _ = self.envs.reset(seed=seed, options=options)
        self._state: PolicyState = self.policy.initial_state(B, self.device, self.dtype)
        self._prev_action = torch.zeros(
            (B, *self._action_shape), dtype=self._action_dtype, device=self.device
        )
        # per-sub-env bookkeeping lives on the host as numpy (a few µs per step instead of a few
        # dozen small tensor ops); the tensors the policy reads are made from it once per step
        self._reset_next = np.ones(B, dtype=bool)
        self._prev_reward = np.zeros(B)  # the env's reward, cast to the policy dtype when read
        self._prev_done = np.zeros(B, dtype=bool)
        self._episodes_in_trial = np.zeros(B, dtype=np.int64)
        self._returns = np.zeros(B)

    # -- conversions ----------------------------------------------------------------------------
    def _obs_tensor(self, obs: np.ndarray) -> Tensor:
        # a copy: with ``copy=False`` vector envs reuse their observation buffer in place
        t = torch.tensor(np.asarray(obs), device=self.device)
        if isinstance(self.obs_space, gym.spaces.Discrete):
            return t.long()
        if is_image_space(self.obs_space):
            return t  # uint8 frames; the policy's encoder scales them
        return t.to(self.dtype)

    def _env_action(self, action: Tensor) -> np.ndarray:
        """Sampled actions -> what the env accepts. Box actions are clipped to the bounds here
        only; the trajectory keeps the sampled action so that its log-prob stays consistent."""
        a = action.detach().cpu().numpy()
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            return np.clip(a, space.low, space.high).astype(space.dtype)
        return a.astype(np.int64)

    def _context(self, action: Tensor, reward: Tensor, done: Tensor) -> dict[str, Tensor]:
        if not self.in_context:
            return {}
        return {"prev_action": action, "prev_reward": reward, "prev_done": done}

    def _step_context(self) -> dict[str, Tensor]:
        """The in-context inputs of the next step (none without ``in_context``)."""
        if not self.in_context:
            return {}
        prev_reward = self._tensor(self._prev_reward, self.dtype)
        return self._context(self._prev_action, prev_reward, self._tensor(self._prev_done))

    def _tensor(self, a: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
        """A host array as a tensor on the device (``dtype``: cast, as ``Tensor.to``)."""
        t = torch.from_numpy(a).to(self.device)
        return t if dtype is None else t.to(dtype)

    def _success(self, info: dict, done: np.ndarray) -> np.ndarray:
        """``info["success"]`` per sub-env, 0 where unknown. At an episode end the step's info is
        in ``info["final_info"]`` (``info`` itself then holds the reset's info)."""
        step = np.zeros(self.num_envs)
        if "success" in info:
            step = np.where(info["_success"], np.asarray(info["success"], dtype=np.float64), 0.0)
        final = np.zeros(self.num_envs)
        final_info = info.get("final_info")
        if isinstance(final_info, dict) and "success" in final_info:
            final = np.where(
                final_info["_success"], np.asarray(final_info["success"], dtype=np.float64), 0.0
            )
        return np.where(done, final, step)

    def _bootstrap_values(
        self, info: dict, truncated: np.ndarray, state: PolicyState, action: Tensor, reward: Tensor
    ) -> Tensor:
        """``V(final_obs)`` for the sub-envs truncated (not terminated) at this step, evaluated with
        one extra policy step on those rows of the pre-reset state ``state``; 0 elsewhere. The
        in-context inputs are this step's action and reward with done = 0: from the value's point
        of view the cut-off episode simply continues."""
        boot = torch.zeros(self.num_envs, dtype=self.dtype, device=self.device)
        if not truncated.any():
            return boot
        rows = np.flatnonzero(truncated)
        idx = torch.as_tensor(rows, device=self.device)
        final_obs = self._obs_tensor(np.stack(info["final_obs"][rows]))  # (K, *obs_shape)
        sub_state = pytree.tree_map(lambda s: s[idx], state)
        ctx = self._context(
            action[idx], reward[idx], torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        )
        out, _ = self.policy.step(final_obs, sub_state, **ctx)
        return boot.index_put((idx,), out.value)

    def _sample(self, out: PolicyOutput) -> Tensor:
        if self.sample_rows is None:
            return self.policy.sample(out, self.generator)
        offset, total = self.sample_rows
        rows = slice(offset, offset + self.num_envs)
        params = out.dist_params.new_zeros((total, *out.dist_params.shape[1:]))
        params[rows] = out.dist_params  # other rows: zeros, a valid stand-in for every head
        full = PolicyOutput(params, out.value.new_zeros((total, *out.value.shape[1:])))
        return self.policy.sample(full, self.generator)[rows]

    # -- collecting -----------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, num_steps: int, deterministic: bool = False) -> Trajectory:
        """Step all sub-envs ``num_steps`` times and return the ``(T=num_steps, B)`` trajectory.

        ``deterministic`` acts with the distribution's mode instead of sampling.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if self._obs is None:
            self.new_trial(seed=self.seed)
        policy, dev, B = self.policy, self.device, self.num_envs
        initial_state = self._state
        start_returns = self._tensor(self._returns.copy())
        rec: dict[str, list] = defaultdict(list)  # per step: tensors (policy side), numpy (host)
        for _ in range(num_steps):
            obs, reset = self._obs_tensor(self._obs), self._reset_next
            ctx = self._step_context()
            # reset=None where no row resets: the same as an all-False mask (zeroing nothing)
            reset_t = self._tensor(reset) if reset.any() else None
            out, state = self._stepper.step(obs, self._state, reset=reset_t, **ctx)
            action = policy.mode(out) if deterministic else self._sample(out)
            log_prob = policy.log_prob(out, action)

            next_obs, reward_np, term_np, trunc_np, info = self.envs.step(self._env_action(action))
            # copies: the arrays are kept until the end of the call, and an env may reuse them
            term_np, trunc_np = np.array(term_np, dtype=bool), np.array(trunc_np, dtype=bool)
            reward_np = np.array(reward_np)
            done_np = term_np | trunc_np
            bootstrap = trunc_np & ~term_np
            boot = None
            if bootstrap.any():
                reward = self._tensor(reward_np, self.dtype)
                boot = self._bootstrap_values(info, bootstrap, state, action, reward)

            # Trial bookkeeping: an episode end is a trial end per episode, or every
            # `episodes_per_trial` episodes in trial mode.
            episodes = self._episodes_in_trial + done_np
            if self.reset_state == "episode":
                trial_end = done_np
            elif self.episodes_per_trial is None:
                trial_end = np.zeros(B, dtype=bool)
            else:
                trial_end = episodes >= self.episodes_per_trial
            for key, value in (
                ("obs", obs),
                ("actions", action),
                ("rewards", reward_np),
                ("terminated", term_np),
                ("truncated", trunc_np),
                ("log_probs", log_prob),
                ("values", out.value),
                ("dist_params", out.dist_params),
                ("success", self._success(info, done_np)),
                ("resets", reset),
                ("prev_actions", self._prev_action),
                ("prev_rewards", self._prev_reward),
                ("prev_dones", self._prev_done),
                ("trial_ends", trial_end),
                ("bootstrap_values", boot),
            ):
                rec[key].append(value)

            self._state = state
            self._reset_next = trial_end
            self._episodes_in_trial = np.where(trial_end, 0, episodes)
            if trial_end.any():
                action = action.clone()
                action[self._tensor(trial_end)] = 0
            self._prev_action = action
            self._prev_reward = np.where(trial_end, 0.0, reward_np)
            self._prev_done = done_np & ~trial_end
            self._obs = next_obs

        # V(o_T) with the state (and reset) step T would use; it equals values[0] of the next call.
        ctx = self._step_context()
        reset_t = self._tensor(self._reset_next) if self._reset_next.any() else None
        last, _ = self._stepper.step(self._obs_tensor(self._obs), self._state, reset=reset_t, **ctx)
        host = {
            "rewards": self.dtype,
            "terminated": None,
            "truncated": None,
            "success": self.dtype,
            "resets": None,
            "prev_rewards": self.dtype,
            "prev_dones": None,
            "trial_ends": None,
        }
        arrays = {k: np.stack(rec.pop(k)) for k in host}  # (T, B) each
        steps = {k: self._tensor(arrays[k], dtype) for k, dtype in host.items()}
        zeros = torch.zeros(B, dtype=self.dtype, device=dev)
        boots = rec.pop("bootstrap_values")
        steps["bootstrap_values"] = torch.stack([zeros if b is None else b for b in boots])
        steps.update({k: torch.stack(v) for k, v in rec.items()})
        # running episode returns of the rewards as recorded (in the policy dtype), in float64
        rewards = steps["rewards"].double().cpu().numpy()
        for t, done_t in enumerate(arrays["terminated"] | arrays["truncated"]):
            self._returns = np.where(done_t, 0.0, self._returns + rewards[t])
        return Trajectory(
            **steps,
            last_value=last.value,
            start_returns=start_returns,
            task_ids=self.task_ids.clone(),
            initial_state=initial_state,
        )
