#!/usr/bin/env python
"""DIAYN on the 2D point: discover 8 skills, check that a discriminator tells them apart.

    python experiments/skills_diayn.py                  # 8 skills, 300k steps (~4 min, 1 thread)
    python experiments/skills_diayn.py --quick          # smoke test, < 1 min

Trains :func:`skills.diayn.train_diayn` (a GRU SequencePolicy reading ``s ⊕ onehot(z)``, PPO from
``metarl``, the discriminator reward ``log q(z|s') - log p(z)``) on :class:`skills.envs.PointEnv`
(nav2d's dynamics, no goal). Then plays every skill from the origin, deterministically (the
mode, as a skill acts from the library) and sampling, and reports the discriminator's accuracy on
the final positions (target ≥ 0.9, deterministic) and on every visited state.
Writes ``experiments/results/skills_diayn.json``, a plot of the final positions per skill
(``skills_diayn_final_positions.png``) and the skills as a library (``runs/skills_diayn_library``:
one shared base, eight skills with their mean final position as embedding). ``--quick`` writes
``*_quick.*`` files instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_io import run_metadata

from metarl.ppo import PPOConfig
from skills import SkillLibrary
from skills.diayn import DIAYNConfig, extract_diayn_skills, rollout_skills, train_diayn
from skills.envs import make_point_vec_env
from ssm.util import write_json_atomic

HERE = Path(__file__).resolve().parent
TARGET = 0.9


def plot_final_positions(final: np.ndarray, sampled: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    colours = plt.get_cmap("tab10")
    for z in range(final.shape[0]):
        c = colours(z % 10)
        ax.scatter(sampled[z, :, 0], sampled[z, :, 1], s=6, color=c, alpha=0.35)
        ax.scatter(final[z, :, 0], final[z, :, 1], s=40, color=c, edgecolor="k", label=f"z={z}")
    ax.scatter([0], [0], marker="x", color="black", label="start")
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", title=title)
    ax.text(-1.0, -1.0, "large: deterministic (mode); small: sampled actions", fontsize=7)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-skills", type=int, default=8)
    ap.add_argument("--total-steps", type=int, default=300_000)
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--num-steps", type=int, default=64)
    ap.add_argument("--episode-steps", type=int, default=32)
    ap.add_argument("--kind", default="gru")
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ent-coef", type=float, default=0.003)
    ap.add_argument("--curiosity", choices=["rnd", "icm"], default=None)
    ap.add_argument("--eval-episodes", type=int, default=20, help="per skill")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a few thousand steps: a smoke test")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--library", type=Path, default=None)
    args = ap.parse_args()
    suffix = "_quick" if args.quick else ""
    if args.quick:
        args.total_steps, args.eval_episodes = 4 * args.num_envs * args.num_steps, 4
    out = args.out or HERE / "results" / f"skills_diayn{suffix}.json"
    library = args.library or HERE.parent / "runs" / f"skills_diayn_library{suffix}"
    torch.set_num_threads(1)

    cfg = DIAYNConfig(
        n_skills=args.n_skills,
        ppo=PPOConfig(
            total_steps=args.total_steps,
            num_envs=args.num_envs,
            num_steps=args.num_steps,
            learning_rate=args.lr,
            ent_coef=args.ent_coef,
            seed=args.seed,
        ),
        kind=args.kind,
        d_model=args.d_model,
        box_head="tanh",
        curiosity=args.curiosity,
    )
    t0 = time.perf_counter()

    def log(row: dict) -> None:
        if row["iteration"] % 20 == 0 or row["iteration"] == 1:
            print(
                f"it {row['iteration']:4d} step {row['global_step']:8d} "
                f"disc acc {row['disc_acc']:.3f} reward {row['reward/diayn']:+.3f} "
                f"entropy {row['entropy']:.2f} sps {row['steps_per_second']:.0f}",
                flush=True,
            )

    envs = make_point_vec_env(args.num_envs, args.episode_steps, seed=args.seed)
    result = train_diayn(envs, cfg, log=log)
    train_s = time.perf_counter() - t0

    eval_envs = make_point_vec_env(args.num_envs, args.episode_steps, seed=args.seed + 1000)
    disc = result.discriminator
    acc = {}
    for mode in ("deterministic", "sampled"):
        ev = rollout_skills(
            result.policy, eval_envs, args.n_skills, args.eval_episodes, mode == "deterministic"
        )
        f = ev["final_states"]
        z = torch.arange(args.n_skills).repeat_interleave(f.shape[1])
        acc[mode] = {
            "final_states": disc.accuracy(torch.as_tensor(f.reshape(-1, f.shape[-1])), z),
            "all_states": disc.accuracy(
                torch.as_tensor(ev["states"]), torch.as_tensor(ev["state_skills"])
            ),
        }
        if mode == "deterministic":
            final = f
        else:
            sampled = f
        print(
            f"discriminator accuracy, {mode} skills: final states "
            f"{acc[mode]['final_states']:.3f}, all states {acc[mode]['all_states']:.3f}"
        )
    acc_final = acc["deterministic"]["final_states"]
    means = final.mean(axis=1)
    for z, m in enumerate(means):
        print(f"  skill {z}: mean final position ({m[0]:+.2f}, {m[1]:+.2f})")

    plot = out.with_name(out.stem + "_final_positions.png")
    plot_final_positions(
        final,
        sampled,
        plot,
        f"DIAYN, {args.n_skills} skills: final positions (acc {acc_final:.2f})",
    )
    if library.exists():
        shutil.rmtree(library)
    lib = SkillLibrary.create(library)
    extract_diayn_skills(
        lib,
        result.policy,
        args.n_skills,
        embeddings=np.where(np.abs(means) < 1e-6, 1e-6, means),  # no zero embeddings
        metadata=[{"mean_final_position": m.tolist()} for m in means],
        budget={"env_steps": args.total_steps},
        provenance={"script": "experiments/skills_diayn.py", "seed": args.seed},
    )
    history = result.history
    payload = {
        **run_metadata(),
        "quick": args.quick,
        "config": dataclasses.asdict(cfg),
        "episode_steps": args.episode_steps,
        "train_seconds": train_s,
        "target": f"discriminator accuracy on final states >= {TARGET}",
        "discriminator_accuracy": acc,
        "target_met": acc_final >= TARGET,
        "mean_final_position_per_skill": means.tolist(),
        "plot": str(plot),
        "library": str(library),
        "history": [
            {
                k: row[k]
                for k in (
                    "iteration",
                    "global_step",
                    "disc_acc",
                    "disc_loss",
                    "reward/diayn",
                    "entropy",
                    "approx_kl",
                )
            }
            for row in history
        ],  # fmt: skip
    }
    write_json_atomic(out, payload)
    verdict = "PASS" if acc_final >= TARGET else "FAIL"
    print(f"{verdict}: target {TARGET}; wrote {out}, {plot} and {library} ({train_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
