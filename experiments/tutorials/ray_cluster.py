"""Tutorial: pointing a run at a Ray cluster.

Part 1 builds the config a cluster run uses (``backend=ray`` and the ``ray.*`` keys) and checks
it the way ``metarl train`` does before anything is written; then it shows what a wrong key or
value gives. Part 2 (``--local-cluster``) trains a tiny MAML run twice, on the local backend and
on Ray rollout workers on this machine, and compares the two runs' metrics.

    python experiments/tutorials/ray_cluster.py                   # part 1 (no Ray needed)
    python experiments/tutorials/ray_cluster.py --local-cluster   # part 2 too (needs Ray)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from metarl.config import ConfigError, load_config
from metarl.runner import TrainConfig, check_backend

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "maml_nav2d.yaml"


def part1() -> None:
    # --8<-- [start:config]
    # the same as: metarl train experiments/configs/maml_nav2d.yaml backend=ray \
    #     ray.address=auto ray.num_workers=32 ray.cpus_per_worker=1
    cfg = load_config(
        TrainConfig,
        CONFIG,
        ["backend=ray", "ray.address=auto", "ray.num_workers=32", "ray.cpus_per_worker=1"],
    )
    print(f"backend: {cfg.backend}")
    print(f"ray: {cfg.ray}")
    try:
        check_backend(cfg)  # what `metarl train` checks before it writes a run directory
        print("check_backend: ok (Ray is installed; the cluster is joined when training starts)")
    except ConfigError as e:  # e.g. Ray is not installed: the message names the pip command
        print(f"check_backend: {e}")
    # --8<-- [end:config]

    # --8<-- [start:errors]
    bad = [
        ["backend=ray", "ray.num_worker=4"],  # a typo
        ["backend=ray", "ray.num_workers=0"],  # a value out of range
        ["backend=ray", "ray.cpus_per_worker=one"],  # a wrong type
        ["backend=ray", "algo=ppo"],  # PPO keeps its envs in one process: local only
    ]
    for overrides in bad:
        try:
            check_backend(load_config(TrainConfig, CONFIG, overrides))
            print(f"{' '.join(overrides)}: accepted")
        except ConfigError as e:
            print(f"{' '.join(overrides)}: config error: {e}")
    # --8<-- [end:errors]


def part2(root: Path) -> None:
    from metarl import runner

    # --8<-- [start:local]
    tiny = [  # a few seconds of MAML: 2 outer iterations of 4 goals x 4 episodes of 20 steps
        "max_episode_steps=20",
        "policy.kind=gru",
        "policy.d_model=16",
        "meta.meta_batch_size=4",
        "meta.episodes_per_task=4",
        "meta.iterations=2",
        "eval.tasks=4",
        "eval.adapt_steps=1",
        f"run.root={root}",
        "run.checkpoint_every=0",
        "logging.wandb=disabled",
        "logging.progress=false",
    ]
    rows = {}
    for backend in [
        ["backend=local"],
        # no ray.address: start (or join) a Ray instance on this machine, capped at 2 CPUs
        ["backend=ray", "ray.num_workers=2", "ray.num_cpus=2"],
    ]:
        run = runner.train(CONFIG, [*tiny, *backend, f"run.name={backend[0][8:]}"])
        rows[backend[0]] = [json.loads(line) for line in (run.path / "metrics.jsonl").open()]
    # --8<-- [end:local]
    for local, ray in zip(rows["backend=local"], rows["backend=ray"]):
        print(
            f"iteration {local['iteration']}: return before/after the inner step: "
            f"local {local['pre_return']:.4f}/{local['post_return']:.4f}, "
            f"ray {ray['pre_return']:.4f}/{ray['post_return']:.4f}"
        )
    diff = max(
        abs(local[k] - ray[k])
        for local, ray in zip(rows["backend=local"], rows["backend=ray"])
        for k in ("pre_return", "post_return", "grad_norm")
    )
    print(f"largest difference local vs ray: {diff:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local-cluster", action="store_true", help="part 2: train on local Ray")
    args = ap.parse_args()
    part1()
    if args.local_cluster:
        with tempfile.TemporaryDirectory() as tmp:
            part2(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
