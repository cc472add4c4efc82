#!/usr/bin/env python
"""A quick skill source for the population: "go to resource k" skills for role gathering.

    python experiments/population_skills.py runs/population_goto_library [--steps 300]

For each resource type ``k`` a small GRU ``SequencePolicy`` is fitted by behaviour cloning to the
scripted greedy controller (:meth:`RoleGathering.goto_action`) on the observations of role
gathering episodes in which every agent heads for a random resource with 30% random actions (so
the data covers positions off the expert's path, and other agents anywhere). Each cloned policy
is added to a skill library as ``goto<k>``, embedded by its resource's position, with its
behaviour-cloning accuracy and its coverage (the fraction of steps it spends on its resource when
it acts alone from the start positions) in the metadata. About half a minute on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from metarl.population.envs import RoleGathering
from ssm import SequencePolicy

GAME = {"n_agents": 3, "n_resources": 3}
ARCH = {"kind": "gru", "d_model": 32, "n_layers": 1, "encoder_hidden": 64}


def demonstrations(episodes: int, episode_len: int, seed: int, eps: float = 0.3) -> np.ndarray:
    """Observations ``(episodes·N, T, D)`` of agents heading for random resources, ε-noisy."""
    rng = np.random.default_rng(seed)
    env = RoleGathering(episodes, max_steps=episode_len, **GAME)
    obs, _ = env.reset(seed)
    target = rng.integers(env.n_resources, size=(episodes, env.n_agents))
    seen = []
    for _ in range(episode_len):
        seen.append(obs)
        expert = np.zeros((episodes, env.n_agents), np.int64)
        for k in range(env.n_resources):
            expert = np.where(target == k, env.goto_action(obs, k), expert)
        noise = rng.integers(env.n_actions, size=expert.shape)
        obs = env.step(np.where(rng.random(expert.shape) < eps, noise, expert)).obs
    seqs = np.stack(seen, 2)  # (episodes, N, T, D)
    return seqs.reshape(-1, episode_len, env.obs_dim)


def clone(resource: int, data: np.ndarray, steps: int, seed: int) -> tuple[SequencePolicy, float]:
    """Fit a policy to the goto-``resource`` labels of ``data``; returns it and its accuracy."""
    env = RoleGathering(1, **GAME)
    labels = torch.from_numpy(env.goto_action(data, resource))
    obs = torch.from_numpy(data)
    torch.manual_seed(seed)
    space = gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32)
    policy = SequencePolicy(space, gym.spaces.Discrete(env.n_actions), **ARCH)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(obs), (64,), generator=gen)
        out, _ = policy(obs[idx])
        loss = F.nll_loss(out.dist_params.reshape(-1, env.n_actions), labels[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out, _ = policy(obs)
        accuracy = float((out.dist_params.argmax(-1) == labels).float().mean())
    return policy, accuracy


@torch.no_grad()
def coverage(skill, resource: int, episodes: int = 16, episode_len: int = 25) -> float:
    """Fraction of steps one agent, acting with ``skill``, covers ``resource`` (others idle)."""
    env = RoleGathering(episodes, max_steps=episode_len, **GAME)
    obs, _ = env.reset(seed=123)
    state, hits = None, 0.0
    for _ in range(episode_len):
        a, state = skill.act(obs[:, 0], state)
        actions = np.zeros((episodes, env.n_agents), np.int64)
        actions[:, 0] = a
        obs = env.step(actions).obs
        hits += float((env.roles()[:, 0] == resource).mean())
    return hits / episode_len


def build_goto_library(path: str | Path, steps: int = 300, seed: int = 0) -> Path:
    """Create (or fill) the skill library at ``path`` with ``goto0 .. goto{K-1}``."""
    from skills import SkillLibrary
    from skills.extract import skill_from_policy

    torch.set_num_threads(1)
    path = Path(path)
    library = SkillLibrary.open(path, create=True)
    env = RoleGathering(1, **GAME)
    data = demonstrations(episodes=128, episode_len=25, seed=seed)
    for k in range(env.n_resources):
        name = f"goto{k}"
        if name in library:
            continue
        policy, accuracy = clone(k, data, steps, seed + k)
        info = skill_from_policy(
            library,
            name,
            policy,
            embedding=env.resources[k],
            source="behaviour cloning of the scripted goto controller (role gathering)",
            metadata={"bc_accuracy": accuracy, "game": GAME, "resource": k},
            budget={"bc_steps": steps, "demonstration_episodes": 128},
        )
        cov = coverage(library.get(name), k)
        print(f"{info.name}: behaviour-cloning accuracy {accuracy:.3f}, coverage {cov:.2f}")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library", help="library directory to create or fill")
    ap.add_argument("--steps", type=int, default=300, help="behaviour-cloning steps per skill")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    build_goto_library(args.library, args.steps, args.seed)
    print(f"library {args.library} ready in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
