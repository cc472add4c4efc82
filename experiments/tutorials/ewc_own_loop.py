"""Tutorial: EWC in your own training loop.

A hand-written PPO loop (rollout, GAE, clipped loss, Adam: nothing of the framework's trainers)
learns two nav2d goals one after the other, north-east then south-west (the shipped
``nav2d_quadrants`` curriculum: the observation carries a one-hot task id). The loop uses
:class:`continual.EWC` through the plugin interface every trainer uses: ``loss`` adds the penalty
``λ Σ_i F̃_i (θ_i − θ*_i)²`` to each update, and ``end_stage`` estimates the diagonal Fisher from
the stage's last trajectories and anchors θ*. The script runs the loop twice, without EWC
(fine-tuning) and with it, and prints how well each still reaches the first goal.

    python experiments/tutorials/ewc_own_loop.py [--iterations 20] [--strength 100]
"""

from __future__ import annotations

import argparse
import sys

import torch

from continual import EWC
from curricula import load_curriculum
from metarl import Rollout, StageEnd, gae, policy_evaluate, ppo_loss
from ssm import SequencePolicy

NUM_ENVS, NUM_STEPS, EPOCHS, FISHER_BATCHES = 8, 80, 4, 2


# --8<-- [start:score]
def score(built, name: str, policy: SequencePolicy) -> float:
    """The task entry's score in [0, 1] of one greedy episode (the curriculum's return_range)."""
    entry = built.curriculum.task(name)
    T = built.family_of(name).max_episode_steps
    envs = built.vector_env(built.assignments([name], 1), seed=0)
    with torch.no_grad():
        traj = Rollout(policy, envs, seed=0).collect(T, deterministic=True)  # one episode
    envs.close()
    return entry.score(float(traj.rewards.sum()), 0.0)


# --8<-- [end:score]


def train(strength: float, iterations: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    # --8<-- [start:setup]
    built = load_curriculum("nav2d_quadrants").build()  # 4 goals; we use the first two
    policy = SequencePolicy(
        built.observation_space, built.action_space, kind="s4d", d_model=32, n_layers=1,
        encoder_hidden=32, box_head="tanh",
    )  # fmt: skip
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    # EWC as a plugin; without it (strength 0) the loop is plain fine-tuning
    ewc = EWC(strength, fisher_batches=FISHER_BATCHES) if strength > 0 else None
    generator = torch.Generator().manual_seed(seed)
    # --8<-- [end:setup]
    for stage, name in enumerate(["north_east", "south_west"]):
        envs = built.vector_env(built.assignments([name], NUM_ENVS), seed=seed)
        rollout = Rollout(policy, envs, generator=generator, seed=seed)
        recent = []  # the stage's last batches, for the Fisher
        # --8<-- [start:loop]
        for _ in range(iterations):
            with torch.no_grad():
                traj = rollout.collect(NUM_STEPS)  # (T, B, ...); episodes run on across calls
            adv, ret = gae(
                traj.rewards, traj.values, traj.terminated, traj.truncated,
                traj.bootstrap_values, traj.last_value, gamma=0.95, lam=0.95,
            )  # fmt: skip
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            params = dict(policy.named_parameters())
            for _ in range(EPOCHS):
                new = policy_evaluate(policy, None, traj)  # re-run the policy over the batch
                loss, _ = ppo_loss(
                    new.log_probs, traj.log_probs, adv, new.values, traj.values, ret, new.entropy
                )
                if ewc is not None:  # + λ Σ F̃ (θ − θ*)² (0 until the first stage has ended)
                    stats: dict[str, float] = {}  # the plugin logs its penalty here
                    loss = loss + ewc.loss(params, stats)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
                optimizer.step()
            recent = [*recent, traj][-FISHER_BATCHES:]
        envs.close()
        if ewc is not None and stage == 0:  # (after the last stage there is nothing to protect)
            # the stage ends: EWC estimates the Fisher at θ*_k from the stage's last batches
            ewc.end_stage(StageEnd(stage, params, policy, data=recent, generator=generator))
        # --8<-- [end:loop]
        if stage == 0:
            after_first = score(built, "north_east", policy)
    return {
        "north_east after stage 1": after_first,
        "north_east after stage 2": score(built, "north_east", policy),
        "south_west after stage 2": score(built, "south_west", policy),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20, help="PPO iterations per stage")
    ap.add_argument("--strength", type=float, default=100.0, help="EWC λ")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for label, strength in [("fine-tuning", 0.0), (f"EWC (λ={args.strength:g})", args.strength)]:
        scores = train(strength, args.iterations, args.seed)
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
