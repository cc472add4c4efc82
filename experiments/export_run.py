#!/usr/bin/env python
"""Copy a finished run's result into ``experiments/results/`` for committing.

    python experiments/export_run.py runs/rl2-bandit-1a2b3c4d rl2_bandit_mamba

Writes ``results/<name>.json`` (the run's command, git commit, seed, machine, config, status,
training time, evaluation results and the per-iteration metrics) and copies its plots to
``results/<name>_<plot>.png``. Nothing is recomputed: every number comes from the run directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml
from results_io import run_metadata

from metarl.run_dir import RunDir
from ssm.util import write_json_atomic

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = ap.parse_args()
    run = RunDir.open(args.run_dir)
    meta = run.meta
    status = json.loads((run.path / "status.json").read_text())
    if status["status"] != "finished":
        print(f"{run.path} is {status['status']}, not finished", file=sys.stderr)
        return 1
    rows = run.read_metrics()
    config = yaml.safe_load(run.config_path.read_text())
    machine = run_metadata()["machine"]  # this machine; the run's threads: its config
    machine["threads"] = (config.get("run") or {}).get("threads") or "torch default"
    payload = {
        "command": " ".join(["metarl", *meta["command"][2:]]),
        "commit": meta.get("git_commit"),
        "dirty": meta.get("git_dirty"),
        "seed": meta["seed"],
        "machine": {**machine, "hostname": meta.get("hostname")},
        "start_time": meta.get("start_time"),
        "train_seconds": rows[-1]["global_step"] / rows[-1]["steps_per_second"] if rows else None,
        "config": config,
        "status": status,
        "eval": json.loads((run.path / "eval.json").read_text()),
        "history": rows,
    }
    out = args.out_dir / f"{args.name}.json"
    write_json_atomic(out, payload)
    for png in sorted(run.plot_dir.glob("*.png")):
        shutil.copyfile(png, args.out_dir / f"{args.name}_{png.name}")
    print(f"wrote {out} and {len(list(run.plot_dir.glob('*.png')))} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
