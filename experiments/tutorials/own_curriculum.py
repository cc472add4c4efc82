"""Tutorial: your own curriculum YAML, run with ``metarl sequence``.

A curriculum of two task *distributions* (nav2d goals in the north-east, then in the south-west
quadrant), each stage trained on sampled train goals and scored on held-out test goals of the same
quadrant (the ``eval:`` entry). A tiny PPO run goes through it (about 1,000 env steps per stage),
and the script reads the run's ``results.json``.

    python experiments/tutorials/own_curriculum.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# --8<-- [start:curriculum]
CURRICULUM = """\
name: two_quadrants
description: nav2d goals of one quadrant per stage; scored on held-out goals of that quadrant
task_id_obs: false
steps_per_stage: 32000            # the default duration of a stage, in env steps
defaults:                         # every task entry inherits these
  family: nav2d
  metric: return                  # score = (return - low) / (high - low), clipped to [0, 1]
  return_range: [-12.0, -1.0]
tasks:                            # name -> task entry (here: sampled sets of goals)
  ne_train:
    family_kwargs: {max_episode_steps: 20, goal_low: [0.05, 0.05], goal_high: [0.5, 0.5]}
    sample: 8                     # 8 goals of the family's train split, drawn with seed 1
    split: train
    seed: 1
  ne_test:
    family_kwargs: {max_episode_steps: 20, goal_low: [0.05, 0.05], goal_high: [0.5, 0.5]}
    sample: 4                     # 4 held-out goals (the test split is disjoint from train)
    split: test
    seed: 2
  sw_train:
    family_kwargs: {max_episode_steps: 20, goal_low: [-0.5, -0.5], goal_high: [-0.05, -0.05]}
    sample: 8
    split: train
    seed: 1
  sw_test:
    family_kwargs: {max_episode_steps: 20, goal_low: [-0.5, -0.5], goal_high: [-0.05, -0.05]}
    sample: 4
    split: test
    seed: 2
stages:
  - {name: north_east, tasks: [ne_train], eval: [ne_test]}
  - {name: south_west, tasks: [sw_train], eval: [sw_test]}
"""
# --8<-- [end:curriculum]

# --8<-- [start:config]
CONFIG = """\
curriculum: {curriculum}          # a shipped name (metarl sequence --list) or a YAML path
stage_steps: 960                  # tiny budget for the tutorial: overrides steps_per_stage
seed: 1
learner: ppo
policy: {{kind: s4d, d_model: 16, n_layers: 1, encoder_hidden: 16, box_head: tanh}}
ppo: {{num_envs: 8, num_steps: 40, num_minibatches: 2, update_epochs: 2, learning_rate: 0.003}}
regularizer: {{kind: ewc, strength: 10.0, fisher_iterations: 1}}
eval: {{every_iterations: 3, episodes: 4, deterministic: true}}
run: {{root: {root}, checkpoint_every: 0, threads: 1}}
logging: {{wandb: disabled, progress: false}}
"""
# --8<-- [end:config]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        # --8<-- [start:run]
        curriculum = work / "two_quadrants.yaml"
        curriculum.write_text(CURRICULUM)
        config = work / "sequence.yaml"
        config.write_text(CONFIG.format(curriculum=curriculum, root=work / "runs"))

        # the same as `metarl sequence sequence.yaml` in a shell
        command = [sys.executable, "-m", "metarl.cli", "sequence", str(config)]
        subprocess.run(command, check=True)

        (run_dir,) = (work / "runs").iterdir()  # runs/two_quadrants-<id>/
        results = json.loads((run_dir / "results.json").read_text())
        # --8<-- [end:run]
        print(f"run directory: {run_dir.name}")
        print(f"files: {sorted(p.name for p in run_dir.iterdir())}")
        # --8<-- [start:results]
        print(f"stages: {results['stages']}, scored on: {results['stage_eval_tasks']}")
        for row, stage in zip(results["R"], results["stages"]):
            print(f"R after {stage:10s}: " + "  ".join(f"{v:.3f}" for v in row))
        summary = results["summary"]  # Continual World metrics over the R matrix
        print(f"average performance: {summary['average_performance']:.3f}")
        print(f"forgetting: {summary['forgetting']:.3f}")
        # --8<-- [end:results]
    return 0


if __name__ == "__main__":
    sys.exit(main())
