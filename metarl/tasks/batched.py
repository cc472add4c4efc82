"""Natively batched vector envs: every sub-env's state in one array, one numpy step for all.

A :class:`BatchedTaskEnv` is a drop-in for what :meth:`TaskFamily.make_vector_env` builds with
``batched=False``: gymnasium's ``SyncVectorEnv`` (``SAME_STEP`` autoreset) over
``TimeLimit(SeededReset(env_i))``, sub-env ``i`` running ``tasks[i]``. For the same tasks, seeds and
actions it returns the same observations, rewards, terminations, truncations and infos, bit for
bit, because each family's batched step does the per-env arithmetic elementwise in the same order,
and every random draw of sub-env ``i`` comes from sub-env ``i``'s own generator (seeded as
gymnasium seeds ``env.np_random``), in the same order. The contract it reproduces, per step::

    state_i ← f(state_i, a_i; task_i);   elapsed_i += 1
    truncated_i = elapsed_i >= max_episode_steps
    where terminated_i or truncated_i:  info["final_obs"][i], info["final_info"] ← that step's;
                                         state_i ← reset (unseeded: the generator continues)
    elsewhere:                           info[key][i] ← that step's info (mask info["_key"])

and ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (a list: ``s[i]``); ``reset()`` without a
seed uses the seed the env was built with on its first reset (``SeededReset``) and continues the
generators after that. ``options={"reset_mask": m}`` resets only the rows in ``m``.

A family supplies the state arrays and three methods: :meth:`_reset_rows`, :meth:`_advance` (one
step of every row, returning rewards, terminations and the step's info arrays) and
:meth:`_observe`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from metarl.tasks.base import Task


class BatchedTaskEnv(gym.vector.VectorEnv, abc.ABC):
    """``len(tasks)`` sub-envs stepped together; sub-env ``i`` runs ``tasks[i]``.

    Args:
        tasks: the task of every sub-env (repeats allowed: several envs per task).
        seeds: the seed of every sub-env's first unseeded reset (``None``: unseeded).
        max_episode_steps: the time limit (truncation at ``elapsed >= max_episode_steps``).
        observation_space, action_space: one sub-env's spaces.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        seeds: Sequence[int | None],
        max_episode_steps: int,
        observation_space: gym.Space,
        action_space: gym.Space,
    ) -> None:
        if not tasks:
            raise ValueError("a batched env needs at least one task")
        if len(seeds) != len(tasks):
            raise ValueError(f"expected one seed per task ({len(tasks)}), got {len(seeds)}")
        if isinstance(max_episode_steps, bool) or int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be an int >= 1, got {max_episode_steps!r}")
        self.tasks = tuple(tasks)
        self.num_envs = B = len(self.tasks)
        self.max_episode_steps = int(max_episode_steps)
        self.autoreset_mode = gym.vector.AutoresetMode.SAME_STEP
        self.metadata = {"autoreset_mode": self.autoreset_mode}
        self.single_observation_space = observation_space
        self.single_action_space = action_space
        self.observation_space = batch_space(observation_space, B)
        self.action_space = batch_space(action_space, B)
        self._pending_seeds: list[int | None] = [None if s is None else int(s) for s in seeds]
        # sub-env i's generator, created on first use from _rng_seeds[i] (as gym.Env.np_random)
        self._rngs: list[np.random.Generator | None] = [None] * B
        self._rng_seeds: list[int | None] = [None] * B
        self._elapsed = np.zeros(B, dtype=np.int64)
        self._was_reset = np.zeros(B, dtype=bool)
        self._rows = np.arange(B)

    # -- what a family implements -------------------------------------------------------------
    @abc.abstractmethod
    def _reset_rows(self, rows: np.ndarray, options: dict[str, Any] | None) -> None:
        """Put sub-envs ``rows`` at the start of an episode (their generators are already set)."""

    @abc.abstractmethod
    def _advance(self, actions: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One step of every sub-env: ``(rewards (B,) float64, terminated (B,) bool, info)`` with
        ``info`` the step's per-env values, ``{key: (B, ...) array}``."""

    @abc.abstractmethod
    def _observe(self) -> np.ndarray:
        """A fresh ``(B, *obs_shape)`` array of the current observations."""

    def _sub_env_attrs(self) -> dict[str, Sequence[Any]]:
        """Per-sub-env values :meth:`get_attr` offers besides ``task`` and ``np_random``."""
        return {}

    # -- randomness -----------------------------------------------------------------------------
    def _rng(self, i: int) -> np.random.Generator:
        """Sub-env ``i``'s generator: ``seeding.np_random(seed)`` of its last seeded reset."""
        rng = self._rngs[i]
        if rng is None:
            rng = self._rngs[i] = seeding.np_random(self._rng_seeds[i])[0]
        return rng

    def _reseeded(self, rows: np.ndarray) -> None:
        """Hook: sub-envs ``rows`` got a new generator (families drop anything drawn ahead)."""

    # -- the vector-env API ---------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        B = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * B
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(B)]
        else:
            seeds = list(seed)
            if len(seeds) != B:
                raise ValueError(f"reset seeds must be an int or {B} seeds, got {len(seeds)}")
        options = dict(options) if options else None
        mask = np.ones(B, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = options.pop("reset_mask")
            if not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (B,)):
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({B},)")
            if not mask.any():
                raise ValueError("options['reset_mask'] must select at least one sub-env")
        rows = np.flatnonzero(mask)
        reseeded = []
        for i in rows:
            s = seeds[i]
            if s is None:  # SeededReset: the build-time seed on the first unseeded reset
                s, self._pending_seeds[i] = self._pending_seeds[i], None
            else:
                self._pending_seeds[i] = None
            if s is not None:
                self._rngs[i], self._rng_seeds[i] = None, int(s)
                reseeded.append(i)
        if reseeded:
            self._reseeded(np.asarray(reseeded, dtype=np.int64))
        self._elapsed[rows] = 0
        self._was_reset[rows] = True
        self._reset_rows(rows, options)
        return self._observe(), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._was_reset.all():
            raise RuntimeError("call reset() before step(): some sub-envs were never reset")
        reward, terminated, step_info = self._advance(actions)
        self._elapsed += 1
        truncated = self._elapsed >= self.max_episode_steps
        done = terminated | truncated
        obs = self._observe()
        infos: dict[str, Any] = {}
        if not done.any():
            running = np.ones(self.num_envs, dtype=bool)
            for key, value in step_info.items():
                infos[key], infos[f"_{key}"] = value, running.copy()
            return obs, reward, terminated, truncated, infos
        running = ~done
        if running.any():
            infos.update(_masked(step_info, running))
        rows = np.flatnonzero(done)
        final_obs = np.full(self.num_envs, None, dtype=object)
        for i, row in zip(rows, obs[rows].copy()):  # copies: obs rows are overwritten below
            final_obs[i] = row
        infos["final_obs"], infos["_final_obs"] = final_obs, done.copy()
        infos["final_info"], infos["_final_info"] = _masked(step_info, done), done.copy()
        self._elapsed[rows] = 0
        self._reset_rows(rows, None)  # autoreset: unseeded, the generators continue
        obs[rows] = self._observe()[rows]
        return obs, reward, terminated, truncated, infos

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Per-sub-env values, as ``SyncVectorEnv.get_attr``: ``task``, ``np_random`` and the
        family's task parameters."""
        if name == "task":
            return self.tasks
        if name == "np_random":
            return tuple(self._rng(i) for i in range(self.num_envs))
        attrs = self._sub_env_attrs()
        if name not in attrs:
            raise AttributeError(
                f"{type(self).__name__} offers get_attr of "
                f"{sorted(['task', 'np_random', *attrs])}, not {name!r}"
            )
        return tuple(attrs[name])

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Only attribute reads (see :meth:`get_attr`): a batched env has no sub-env objects."""
        if args or kwargs:
            raise ValueError(f"{type(self).__name__}.call only reads attributes; got arguments")
        return self.get_attr(name)

    def set_attr(self, name: str, values: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} holds its tasks' parameters as arrays and cannot set {name!r}; "
            "build a new env for new tasks (family.make_vector_env)"
        )


def _masked(info: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """``info`` with the rows outside ``mask`` zeroed, and its ``_key`` masks (gymnasium's layout
    for infos that only some sub-envs report)."""
    out: dict[str, np.ndarray] = {}
    for key, value in info.items():
        kept = np.zeros_like(value)
        kept[mask] = value[mask]
        out[key], out[f"_{key}"] = kept, mask.copy()
    return out
