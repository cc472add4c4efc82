"""Tutorial: library skills in your own agent.

Part 1 makes a small skill library the way ``experiments/skills_diayn.py`` does (DIAYN skills on
a 2D point, a short run here, so the skills are only roughly apart). Part 2 is an agent that
knows nothing of the framework: it opens the library with ``skills.SkillLibrary`` (torch, numpy
and safetensors are all that needs), picks the skill whose embedding points most nearly towards
its goal, and runs it inside its own loop, numpy in and numpy out.

    python experiments/tutorials/skills_own_agent.py [--library DIR] [--steps 8192]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_library(path: Path, total_steps: int, n_skills: int = 4, seed: int = 1) -> None:
    """A DIAYN run on the point env, its skills written to a library at ``path``."""
    import torch

    from metarl.ppo import PPOConfig
    from skills import SkillLibrary
    from skills.diayn import DIAYNConfig, extract_diayn_skills, rollout_skills, train_diayn
    from skills.envs import make_point_vec_env

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny networks: more threads only contend
    # --8<-- [start:library]
    cfg = DIAYNConfig(
        n_skills=n_skills,
        ppo=PPOConfig(total_steps=total_steps, num_envs=16, num_steps=64, seed=seed),
        kind="gru",
        d_model=32,
        box_head="tanh",
    )
    result = train_diayn(make_point_vec_env(16, 32, seed=seed), cfg)
    # each skill's embedding: the mean position where its episodes end
    final = rollout_skills(
        result.policy, make_point_vec_env(16, 32, seed=seed + 1000), n_skills, 4, True
    )["final_states"]  # (skills, episodes, 2)
    means = final.mean(axis=1)
    extract_diayn_skills(
        SkillLibrary.create(path),
        result.policy,
        n_skills,
        embeddings=np.where(np.abs(means) < 1e-6, 1e-6, means),  # no zero embeddings
        metadata=[{"mean_final_position": m.tolist()} for m in means],
        budget={"env_steps": total_steps},
        provenance={"script": "experiments/tutorials/skills_own_agent.py", "seed": seed},
    )
    # --8<-- [end:library]


# --8<-- [start:agent]
class MyPointEnv:
    """The agent's own environment: a point in [-1, 1]² that moves by its action (≤ 0.1)."""

    def reset(self) -> np.ndarray:
        self.pos = np.zeros(2, np.float32)
        return self.pos.copy()

    def step(self, action: np.ndarray) -> np.ndarray:
        self.pos = np.clip(self.pos + np.clip(action, -0.1, 0.1), -1.0, 1.0).astype(np.float32)
        return self.pos.copy()


def run_agent(library_path: Path, goal: np.ndarray, steps: int = 32) -> np.ndarray:
    from skills import SkillLibrary  # the import API: no gymnasium, no training code

    library = SkillLibrary.open(library_path)
    print(f"library: {len(library)} skills: {library.list()}")
    name, similarity = library.nearest(goal, k=1)[0]  # cosine k-NN over the embeddings
    skill = library.get(name)
    print(f"goal {goal.tolist()}: chose {name!r} (cosine {similarity:.2f})")
    print(f"  observation shape {skill.spec.obs_shape}, action space {skill.spec.action['type']}")
    print(f"  metadata: source {skill.metadata['source']!r}, budget {skill.metadata['budget']}")
    x, y = skill.metadata["mean_final_position"]  # what the library recorded for it
    print(f"  recorded mean final position: ({x:+.2f}, {y:+.2f})")

    env = MyPointEnv()
    obs, state = env.reset(), None  # state None: a new episode
    for _ in range(steps):
        action, state = skill.act(obs, state)  # deterministic by default; keeps its memory
        obs = env.step(action)
    print(f"  final position after {steps} steps: ({obs[0]:+.2f}, {obs[1]:+.2f})")
    return obs


# --8<-- [end:agent]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, default=None, help="use this library (skip part 1)")
    ap.add_argument("--steps", type=int, default=8192, help="DIAYN env steps for part 1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.library
        if path is None:
            path = Path(tmp) / "library"
            make_library(path, args.steps)
        for goal in ([0.5, 0.5], [-0.5, 0.0]):
            run_agent(path, np.asarray(goal, np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
