"""Tutorial: MAML on your own policy, the whole MAML-RL loop written out.

For each task of a meta-batch: collect support episodes with θ, take one inner gradient step
(φ = θ − α ∇_θ L_in(θ; support), differentiable in θ), collect query episodes *with φ*, and add
the query loss at φ to the meta-gradient; then one outer Adam step on θ. After a few iterations
the script compares, on held-out goals, the return of θ with the return of φ after one step.

    python experiments/tutorials/maml_own_policy.py [--iterations 8]
"""

from __future__ import annotations

import argparse
import sys

import torch

from metarl import MAML, collect_tasks, make_family
from ssm import SequencePolicy


def mean_episode_return(traj) -> float:
    """Mean return of the episodes in a trajectory (each env runs whole episodes here)."""
    return float(traj.rewards.sum(0).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    # --8<-- [start:setup]
    family = make_family("nav2d", max_episode_steps=20)  # goals in [-0.5, 0.5]², 20-step episodes
    T = family.max_episode_steps
    policy = SequencePolicy(
        family.observation_space,
        family.action_space,
        kind="mamba",
        d_model=16,
        n_layers=1,
        box_head="tanh",
    )
    maml = MAML(policy, inner_lr=0.1, inner_steps=1)  # first_order=True: FOMAML
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    episodes, meta_batch = 8, 4  # episodes per task for support and for query
    # --8<-- [end:setup]

    # --8<-- [start:loop]
    for iteration in range(args.iterations):
        optimizer.zero_grad()
        tasks = family.sample(meta_batch, split="train", seed=1000 + iteration)
        query_returns = []
        for i, task in enumerate(tasks):
            seed = 100_000 * iteration + 1000 * i
            support = collect_tasks(policy, family, [task], episodes, T, seed)  # θ acts
            phi = maml.adapt(None, support)  # {name: tensor}, differentiable in θ
            acting = {k: v.detach()[None] for k, v in phi.items()}  # stacked over 1 task
            query = collect_tasks(policy, family, [task], episodes, T, seed + 1, params=acting)
            loss = maml.outer_loss(phi, query) / meta_batch
            loss.backward()  # second order: through the inner step into θ's .grad
            query_returns.append(mean_episode_return(query))
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        print(
            f"iteration {iteration}: meta-gradient norm {grad_norm:.4f}, "
            f"query return (φ acting) {sum(query_returns) / meta_batch:.2f}"
        )
    # --8<-- [end:loop]

    # --8<-- [start:evaluate]
    before, after = [], []
    for i, task in enumerate(family.sample(8, split="test", seed=7)):  # held-out goals
        support = collect_tasks(policy, family, [task], episodes, T, seed=10_000 + i)
        phi = maml.adapt(None, support)
        acting = {k: v.detach()[None] for k, v in phi.items()}
        query = collect_tasks(policy, family, [task], episodes, T, 20_000 + i, params=acting)
        before.append(mean_episode_return(support))
        after.append(mean_episode_return(query))
    print(
        f"held-out goals: return before adaptation {sum(before) / len(before):.2f}, "
        f"after one inner step {sum(after) / len(after):.2f}"
    )
    # --8<-- [end:evaluate]
    return 0


if __name__ == "__main__":
    sys.exit(main())
