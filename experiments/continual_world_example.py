#!/usr/bin/env python
"""Continual World from plain gymnasium code: one env, the tasks one after the other.

    python experiments/continual_world_example.py                        # CW10, 400 steps a task
    python experiments/continual_world_example.py --tasks cw20 --steps-per-task 200
    python experiments/continual_world_example.py --policy scripted      # Meta-World's experts

Nothing of the framework is used beyond the env itself: ``gymnasium.make`` builds
``curricula.continual_world.ContinualWorldEnv`` from its registered id, a random policy (or
Meta-World's scripted expert for the current task, to show non-zero success) acts, and the loop
prints, per position of the sequence, how many episodes ran and the fraction that reached
Meta-World's success flag at any step (how Continual World scores an episode). An episode cut
by a task switch counts for the task it ran on.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import gymnasium as gym


def scripted_policy(env_name: str):
    """Meta-World's expert for ``env_name`` (e.g. ``push-wall-v3`` -> SawyerPushWallV3Policy)."""
    import metaworld.policies

    stem = "".join(w.capitalize() for w in env_name.removesuffix("-v3").split("-"))
    return getattr(metaworld.policies, f"Sawyer{stem}V3Policy")()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="cw10", help="cw10, cw20, or comma-separated v3 names")
    ap.add_argument("--steps-per-task", type=int, default=400, help="env steps per task")
    ap.add_argument("--episode-steps", type=int, default=200, help="episode length (CW: 200)")
    ap.add_argument("--policy", choices=("random", "scripted"), default="random")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tasks = args.tasks if args.tasks in ("cw10", "cw20") else args.tasks.split(",")
    env = gym.make(
        "curricula.continual_world:ssm-metarl/ContinualWorld-v0",
        tasks=tasks,
        steps_per_task=args.steps_per_task,
        max_episode_steps=args.episode_steps,
    )
    env.action_space.seed(args.seed)
    experts: dict = {}
    episodes: dict[tuple[int, str], list[bool]] = defaultdict(list)

    obs, info = env.reset(seed=args.seed)
    reached = False
    while True:
        if args.policy == "random":
            action = env.action_space.sample()
        else:
            name = info["task_name"]
            expert = experts.setdefault(name, scripted_policy(name))
            action = expert.get_action(obs[:39]).clip(-1.0, 1.0)  # without the task one-hot
        obs, _, terminated, truncated, info = env.step(action)
        reached = reached or info["success"] > 0
        if terminated or truncated:
            episodes[(info["task_index"], info["task_name"])].append(reached)
            if info["sequence_done"]:
                break
            obs, info = env.reset()
            reached = False

    print(f"{'pos':>3}  {'task':<20} {'episodes':>8} {'success':>8}")
    for (index, name), flags in sorted(episodes.items()):
        print(f"{index:>3}  {name:<20} {len(flags):>8} {sum(flags) / len(flags):>8.2f}")
    print(f"{info['total_steps']} env steps, {env.unwrapped.num_tasks} distinct tasks")
    env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
