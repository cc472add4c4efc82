"""Training a skill selector with PPO: the semi-MDP of "pick a skill, it runs for k steps".

:class:`SkillSelectionEnv` wraps an environment so that one action is the index of a library
skill, which then acts (deterministically, from a fresh state) for up to ``k`` steps; the reward
is the sum of the rewards on the way. An ordinary ``ssm.SequencePolicy`` over
``Discrete(len(skills))`` trained on it with :func:`metarl.ppo.train_ppo` is the controller of a
:class:`skills.compose.SkillSelector`, which then runs the same hierarchy step by step in the
original environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from .skill import Skill


class SkillSelectionEnv(gym.Env):
    """``env`` seen one skill choice at a time (see the module docstring).

    ``info["skill_steps"]`` is the number of low-level steps the choice ran (< ``k`` where the
    episode ended first).
    """

    def __init__(self, env: gym.Env, skills: Sequence[Skill], k: int):
        if not skills:
            raise ValueError("SkillSelectionEnv needs at least one skill")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.env, self.skills, self.k = env, list(skills), k
        self.observation_space = env.observation_space
        self.action_space = gym.spaces.Discrete(len(self.skills))
        self._obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._obs, info = self.env.reset(seed=seed, options=options)
        return self._obs, info

    def step(self, action: Any):
        skill = self.skills[int(action)]
        state = None
        total, terminated, truncated, info = 0.0, False, False, {}
        steps = 0
        for steps in range(1, self.k + 1):  # noqa: B007 - steps is reported
            a, state = skill.act(self._obs, state)
            self._obs, reward, terminated, truncated, info = self.env.step(a)
            total += float(reward)
            if terminated or truncated:
                break
        return self._obs, total, terminated, truncated, {**info, "skill_steps": steps}

    def close(self) -> None:
        self.env.close()


def make_selection_vec_env(
    make_env, skills: Sequence[Skill], k: int, num_envs: int
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` :class:`SkillSelectionEnv` over ``make_env()``, with ``SAME_STEP`` autoreset
    as the rollout engine requires."""
    return gym.vector.SyncVectorEnv(
        [lambda: SkillSelectionEnv(make_env(), skills, k) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
