#!/usr/bin/env python
"""An outside agent using the skill library: a plain gymnasium loop, nothing of the framework.

    python experiments/skills_diayn.py --quick                            # makes a library
    python experiments/skills_import_example.py runs/skills_diayn_library_quick --goal 0.5 0.5

The agent has its own 2D point environment (written here, as any user's would be). It imports only
``skills.SkillLibrary`` (which needs torch, numpy and safetensors: no gymnasium, no training code),
opens a library, picks the skill whose embedding (for DIAYN skills: the mean final position) is
closest in direction to ``--goal``, and runs it for one episode, acting from numpy observations.
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym
import numpy as np

from skills import SkillLibrary


class MyPointEnv(gym.Env):
    """The agent's own environment: a point in [-1, 1]^2 that moves by its action (≤ 0.1)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2, np.float32)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + np.clip(action, -0.1, 0.1), -1.0, 1.0).astype(np.float32)
        return self.pos.copy(), 0.0, False, False, {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library", help="a skill library directory")
    ap.add_argument("--goal", type=float, nargs=2, default=[0.5, 0.5], help="a direction to go")
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()

    library = SkillLibrary.open(args.library)
    print(f"{library.path}: {len(library)} skills, e.g. {library.list()[:4]}")
    name, similarity = library.nearest(np.asarray(args.goal), k=1)[0]
    skill = library.get(name)
    print(f"chose {name!r} (cosine {similarity:.2f}); metadata: {skill.metadata}")

    env = MyPointEnv()
    obs, _ = env.reset(seed=0)
    state = None  # a new episode
    for _ in range(args.steps):
        action, state = skill.act(obs, state)  # deterministic by default
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    print(f"final position after {args.steps} steps: ({obs[0]:+.2f}, {obs[1]:+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
