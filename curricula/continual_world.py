"""Continual World (Wołczyk et al., 2021) over Meta-World v3, as one plain gymnasium env.

:class:`ContinualWorldEnv` walks through a sequence of Meta-World v3 environments, spending a
fixed number of env steps on each (CW: 1M) before it moves on to the next::

    from curricula.continual_world import ContinualWorldEnv

    env = ContinualWorldEnv("cw10", steps_per_task=1_000_000)   # or "cw20", or a list of names
    obs, info = env.reset(seed=0)
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        if terminated or truncated:
            if info["sequence_done"]:
                break
            obs, info = env.reset()

or, without importing anything of this project by hand,
``gymnasium.make("curricula.continual_world:ssm-metarl/ContinualWorld-v0", tasks="cw10")``
(importing the module registers the id; :func:`register_continual_world` does it explicitly).

**Sequences.** ``tasks`` is a shipped curriculum whose stages are single Meta-World ML1
environments (``"cw10"``, ``"cw20"`` = CW10 twice, read from ``curricula/data/*.yaml``; only the
environment names and stage lengths are read), or a list of Meta-World v3 environment names.

**Budgets and switching.** Position ``p`` of the sequence lasts ``steps_per_task[p]`` calls to
``step()`` (the curriculum's stage length by default), counted across episodes. The step that
spends the budget ends the episode with ``truncated=True`` (as CW does, so the episodes at a
border are shorter) and reports ``info["task_switch"] = True``; the *next* ``reset()`` starts
the next task. Episodes also end (``truncated``) after ``max_episode_steps`` (CW: 200); Meta-World
never terminates an episode by itself. ``step()`` after an episode ended, without ``reset()``,
raises ``RuntimeError``.

**After the last task** (``after_last``): ``"stop"`` (default, as CW) truncates the episode on the
step that spends the last budget, with ``info["sequence_done"] = True``; ``reset()`` then raises
:class:`SequenceFinishedError` (a ``RuntimeError``) until a seeded ``reset(seed=...)`` starts the
sequence over. ``"stay"`` keeps running the last task (no truncation at the budget) and reports
``info["sequence_done"] = True`` on every step from the one that spends the budget on.

**Task id.** Every ``info`` carries ``task_index`` (position in the sequence, 0..19 for CW20),
``task_id`` (the distinct task, numbered by first appearance: 0..9 for CW20, so a repeated task
keeps its id), ``task_name``, ``task_steps`` (steps spent at this position) and ``total_steps``.
With ``task_id_obs`` (default, as CW's single-head networks) the observation is Meta-World's 39
numbers followed by a one-hot of ``task_id`` of length ``num_tasks`` (distinct tasks; the
original CW code instead numbers CW20's 20 positions).

**Success.** ``info["success"]`` is Meta-World's success flag of the step (0.0 or 1.0); CW scores
an episode by whether it was reached at any step.

**Randomness and seeding.** Observations include the goal (Meta-World's multi-task setting, as
CW's MT50-based envs). ``randomization="random_init_all"`` (CW's default) draws a fresh
object/goal configuration every episode from the environment's own seeded sampler
(``_random_reset_space``); ``"mt1"`` picks, every episode, one of the 50 configurations of
``metaworld.MT1(name, seed=benchmark_seed)`` (Meta-World's seeded task sampling). In both modes
the first configuration set by ``set_task`` comes from ``MT1(name, seed=benchmark_seed)``.
``reset(seed=s)`` starts the sequence over (task 0, step counters 0) and derives every task
env's seed from ``s``, so a seeded reset followed by the same actions gives the same
trajectories; ``reset()`` without a seed continues the sequence. Seed once, as gymnasium
advises. Task envs are built on first use (about 0.5 s each) and kept, so CW20 reuses CW10's.
In a gymnasium vector env every copy runs its own sequence and budgets; with the default
``after_last="stop"`` stop the loop at ``sequence_done`` (the autoreset would raise).

Importing this module needs gymnasium, numpy and pyyaml only; Meta-World is imported when an env
is constructed (``pip install 'ssm-lifelong-metarl[metaworld]'``).
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "CW_EPISODE_STEPS",
    "ENV_ID",
    "ContinualWorldEnv",
    "SequenceFinishedError",
    "register_continual_world",
]

ENV_ID = "ssm-metarl/ContinualWorld-v0"
CW_EPISODE_STEPS = 200
"""Continual World's episode length (``META_WORLD_TIME_HORIZON``)."""
DEFAULT_STEPS_PER_TASK = 1_000_000
"""Continual World's budget per task, for task lists (curricula carry their own)."""
MAX_PATH_LENGTH = 500
"""Meta-World's own episode limit: an env refuses to step beyond it."""
RANDOMIZATIONS = ("random_init_all", "mt1")
AFTER_LAST = ("stop", "stay")
OBS_DIM = 39
_OBJ_DIM = 14
_TASK_PREFIX = "metaworld-ml1:"


class SequenceFinishedError(RuntimeError):
    """``reset()`` after the last task's budget is spent (``after_last="stop"``)."""


def _import_metaworld() -> ModuleType:
    try:
        return importlib.import_module("metaworld")
    except ImportError as e:
        raise ImportError(
            f"ContinualWorldEnv needs Meta-World v3 ({e}); install it with: "
            "pip install 'ssm-lifelong-metarl[metaworld]' (or pip install metaworld==3.1.1)"
        ) from e


def _resolve_tasks(tasks: str | Sequence[str]) -> tuple[list[str], list[int] | None]:
    """Environment names of the sequence and the curriculum's stage lengths (None for a list)."""
    if isinstance(tasks, str):
        from .curriculum import available_curricula, load_curriculum

        shipped = available_curricula()
        if tasks not in shipped:
            raise ValueError(
                f"tasks must be a shipped curriculum {shipped} or a list of Meta-World v3 "
                f"environment names, got {tasks!r}"
            )
        curriculum = load_curriculum(tasks)
        names, steps = [], []
        for stage in curriculum.stages:
            families = [curriculum.task(t).family for t in stage.tasks]
            if len(families) != 1 or not families[0].startswith(_TASK_PREFIX):
                raise ValueError(
                    f"curriculum {tasks!r} stage {stage.name!r} must train on one "
                    f"{_TASK_PREFIX}<env> task, got families {families}"
                )
            names.append(families[0][len(_TASK_PREFIX) :])
            steps.append(stage.steps)
        return names, steps
    if not isinstance(tasks, Sequence) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"tasks must be a curriculum name or a list of str, got {tasks!r}")
    if len(tasks) == 0:
        raise ValueError("tasks must name at least one Meta-World v3 environment, got []")
    return list(tasks), None


def _resolve_budgets(steps_per_task: int | Sequence[int] | None, n: int, default: list[int]):
    if steps_per_task is None:
        return default
    if isinstance(steps_per_task, Sequence) and not isinstance(steps_per_task, str):
        budgets = list(steps_per_task)
        if len(budgets) != n:
            raise ValueError(
                f"steps_per_task must be one int or {n} ints (one per task), got {len(budgets)}"
            )
    else:
        budgets = [steps_per_task] * n  # type: ignore[list-item]
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b <= 0:
            raise ValueError(f"steps_per_task must be positive ints, got {steps_per_task!r}")
    return [int(b) for b in budgets]


def _observation_space(num_tasks: int, task_id_obs: bool) -> gym.spaces.Box:
    """Meta-World v3's 39-dim space with goal bounds removed (they differ between environments,
    as CW does), plus ``num_tasks`` one-hot dimensions in [0, 1] with ``task_id_obs``."""
    hand = _import_metaworld().SawyerXYZEnv._HAND_SPACE
    inf = np.full(_OBJ_DIM, np.inf)
    low = np.hstack([hand.low, -1.0, -inf, hand.low, -1.0, -inf, np.full(3, -np.inf)])
    high = np.hstack([hand.high, 1.0, inf, hand.high, 1.0, inf, np.full(3, np.inf)])
    if task_id_obs:
        low = np.hstack([low, np.zeros(num_tasks)])
        high = np.hstack([high, np.ones(num_tasks)])
    return gym.spaces.Box(low, high, dtype=np.float64)


@functools.cache
def _configurations(name: str, benchmark_seed: int) -> tuple[Any, ...]:
    """The 50 configurations (``metaworld.Task``, immutable) of ``MT1(name, seed)``, drawn once."""
    return tuple(_import_metaworld().MT1(name, seed=benchmark_seed).train_tasks)


class _TaskEnv:
    """One Meta-World env of the sequence, its MT1 configurations and how episodes draw them."""

    def __init__(self, name: str, benchmark_seed: int, randomization: str) -> None:
        mw = _import_metaworld()
        self.env = mw.env_dict.ALL_V3_ENVIRONMENTS[name]()
        self.configurations = _configurations(name, benchmark_seed)
        self.env.set_task(self.configurations[0])
        self.randomization = randomization
        if randomization == "random_init_all":
            # Meta-World draws the configuration at reset, with the env's seeded np_random.
            self.env._freeze_rand_vec = False
            self.env.seeded_rand_vec = True

    def seed(self, seed: int) -> None:
        self.env.seed(seed)

    def reset(self) -> tuple[np.ndarray, dict[str, Any]]:
        if self.randomization == "mt1":
            i = int(self.env.np_random.integers(len(self.configurations)))
            self.env.set_task(self.configurations[i])
        return self.env.reset()


class ContinualWorldEnv(gym.Env):
    """A sequence of Meta-World v3 tasks with a step budget each (see the module docstring).

    Args:
        tasks: ``"cw10"``, ``"cw20"`` (or another shipped curriculum of single ML1 stages), or a
            list of Meta-World v3 environment names such as ``["hammer-v3", "push-v3"]``.
        steps_per_task: env steps at each position: one int, one int per position, or None for
            the curriculum's stage lengths (1M for CW10/CW20; 1M for a list).
        task_id_obs: append a one-hot of the distinct task id to the observation.
        max_episode_steps: episode length in [1, 500] (CW: 200).
        after_last: ``"stop"`` (reset raises after the last budget) or ``"stay"`` (keep going).
        randomization: ``"random_init_all"`` (a fresh configuration per episode, CW) or ``"mt1"``
            (one of MT1's 50 seeded configurations per episode).
        benchmark_seed: seed of ``metaworld.MT1``'s configuration draw.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        tasks: str | Sequence[str] = "cw10",
        steps_per_task: int | Sequence[int] | None = None,
        *,
        task_id_obs: bool = True,
        max_episode_steps: int = CW_EPISODE_STEPS,
        after_last: str = "stop",
        randomization: str = "random_init_all",
        benchmark_seed: int = 0,
    ) -> None:
        names, stage_steps = _resolve_tasks(tasks)
        default = stage_steps or [DEFAULT_STEPS_PER_TASK] * len(names)
        self.budgets = _resolve_budgets(steps_per_task, len(names), default)
        if (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or not (1 <= max_episode_steps <= MAX_PATH_LENGTH)
        ):
            raise ValueError(
                f"max_episode_steps must be an int in [1, {MAX_PATH_LENGTH}], got "
                f"{max_episode_steps!r}"
            )
        if after_last not in AFTER_LAST:
            raise ValueError(f"after_last must be one of {AFTER_LAST}, got {after_last!r}")
        if randomization not in RANDOMIZATIONS:
            raise ValueError(
                f"randomization must be one of {RANDOMIZATIONS}, got {randomization!r}"
            )
        if (
            isinstance(benchmark_seed, bool)
            or not isinstance(benchmark_seed, int)
            or (benchmark_seed < 0)
        ):
            raise ValueError(f"benchmark_seed must be an int >= 0, got {benchmark_seed!r}")
        known = list(_import_metaworld().env_dict.ALL_V3_ENVIRONMENTS)
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {close}?" if close else "; see metaworld.MT1.ENV_NAMES"
                raise ValueError(f"unknown Meta-World v3 environment {name!r}{hint}")

        self.sequence: list[str] = names
        """environment name at each position"""
        self.task_names: list[str] = list(dict.fromkeys(names))
        """the distinct environments, in order of first appearance (the one-hot order)"""
        self.task_ids = [self.task_names.index(n) for n in names]
        self.task_id_obs = task_id_obs
        self.max_episode_steps = max_episode_steps
        self.after_last = after_last
        self.randomization = randomization
        self.benchmark_seed = benchmark_seed
        self.observation_space = _observation_space(self.num_tasks, task_id_obs)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

        self._envs: dict[int, _TaskEnv] = {}
        self._env_seeds: list[int] = []
        self._started = False
        self._position = 0
        self._task_steps = 0
        self._total_steps = 0
        self._episode_steps = 0
        self._needs_reset = True
        self._switch_pending = False
        self._finished = False

    # --- the sequence -----------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        """Distinct tasks (the one-hot length): 10 for CW10 and CW20."""
        return len(self.task_names)

    @property
    def position(self) -> int:
        """The current position in the sequence (``info["task_index"]``)."""
        return self._position

    @property
    def finished(self) -> bool:
        """The last budget is spent and ``after_last="stop"``: ``reset()`` raises."""
        return self._finished

    def _task_env(self, task_id: int) -> _TaskEnv:
        if task_id not in self._envs:
            env = _TaskEnv(self.task_names[task_id], self.benchmark_seed, self.randomization)
            env.seed(self._env_seeds[task_id])
            self._envs[task_id] = env
        return self._envs[task_id]

    def _restart(self) -> None:
        """Back to position 0 with every task env's seed drawn from ``self.np_random``."""
        self._env_seeds = [int(s) for s in self.np_random.integers(2**31 - 1, size=self.num_tasks)]
        for task_id, env in self._envs.items():
            env.seed(self._env_seeds[task_id])
        self._started = True
        self._position = self._task_steps = self._total_steps = 0
        self._switch_pending = self._finished = False

    def _info(self) -> dict[str, Any]:
        p = self._position
        return {
            "task_index": p,
            "task_id": self.task_ids[p],
            "task_name": self.sequence[p],
            "task_steps": self._task_steps,
            "total_steps": self._total_steps,
        }

    def _observation(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if not self.task_id_obs:
            return obs
        one_hot = np.zeros(self.num_tasks)
        one_hot[self.task_ids[self._position]] = 1.0
        return np.concatenate([obs, one_hot])

    # --- gymnasium API -----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: with ``seed``, of the sequence's first task, the sequence begun
        anew; without, of the current task, or of the next one after a budget was spent."""
        super().reset(seed=seed)
        if seed is not None or not self._started:
            self._restart()
        elif self._finished:
            raise SequenceFinishedError(
                f"all {len(self.sequence)} task budgets are spent (after_last='stop'); "
                "reset(seed=...) starts the sequence over"
            )
        elif self._switch_pending:
            self._position += 1
            self._task_steps = 0
            self._switch_pending = False
        obs, _ = self._task_env(self.task_ids[self._position]).reset()
        self._episode_steps = 0
        self._needs_reset = False
        return self._observation(obs), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("step() needs reset() first: the episode ended or never began")
        env = self._envs[self.task_ids[self._position]].env
        obs, reward, terminated, truncated, mw_info = env.step(np.asarray(action))
        self._episode_steps += 1
        self._task_steps += 1
        self._total_steps += 1

        last = self._position == len(self.sequence) - 1
        budget_spent = self._task_steps == self.budgets[self._position]
        task_switch = budget_spent and not last
        if task_switch:
            self._switch_pending = True
        if budget_spent and last and self.after_last == "stop":
            self._finished = True
        truncated = bool(
            truncated
            or self._episode_steps >= self.max_episode_steps
            or task_switch
            or self._finished
        )
        terminated = bool(terminated)
        self._needs_reset = terminated or truncated

        info = {**mw_info, **self._info()}
        info["success"] = float(mw_info["success"])
        info["task_switch"] = task_switch
        info["sequence_done"] = last and self._task_steps >= self.budgets[self._position]
        return self._observation(obs), float(reward), terminated, truncated, info

    def close(self) -> None:
        for env in self._envs.values():
            env.env.close()
        self._envs.clear()
        self._started = False


def register_continual_world(env_id: str = ENV_ID) -> str:
    """Register :class:`ContinualWorldEnv` with gymnasium under ``env_id`` (once) and return the
    id; ``gymnasium.make(env_id, tasks=..., steps_per_task=...)`` then builds one."""
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=f"{__name__}:ContinualWorldEnv")
    return env_id


# Registering is a dict insert (no env is built), so that
# ``gymnasium.make("curricula.continual_world:ssm-metarl/ContinualWorld-v0")`` works.
register_continual_world()
