"""``metarl sequence``: run a continual learner through a curriculum.

    metarl sequence CONFIG.yaml [key=value ...]    run into a new run directory, print the metrics
    metarl sequence key=value ...                  the same from the defaults (nav2d_quadrants)
    metarl sequence CONFIG.yaml --seeds 1 2 3 [key=value ...]
                                                   one run per seed, then an aggregate table
                                                   (mean ± 95% CI over seeds, Student-t)
    metarl sequence --resume RUN_DIR [run.key=value ...]
    metarl sequence --list                          the shipped curricula
    metarl sequence --docs                          every config key with its description

Registered as a ``metarl.commands`` entry point (``sequence = "continual.cli:main"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from metarl.cli_args import parse_config_args
from metarl.config import ConfigError, field_docs

EXIT_CONFIG, EXIT_DIVERGED = 2, 3


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="metarl sequence",
        description="Continual RL through a curriculum's stages (EWC, replay, drift detection).",
    )
    ap.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. regularizer.kind=ewc")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    ap.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="SEED [SEED ...]",
        help="run once per seed and aggregate (mean ± 95%% CI over seeds)",
    )
    ap.add_argument("--list", action="store_true", help="list the shipped curricula")
    ap.add_argument("--docs", action="store_true", help="list every config key")
    return ap


def _seed_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be ints, got {text!r}") from None


def _group_seeds(argv: list[str]) -> list[str]:
    """``--seeds 1 2 3 key=value`` -> ``--seeds=1,2,3 key=value``: the seeds end at the first
    argument that is not an int, so overrides may follow them."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--seeds":
            j = i + 1
            while j < len(argv) and argv[j].lstrip("-").isdigit():
                j += 1
            out.append("--seeds=" + ",".join(argv[i + 1 : j]))
            i = j
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_intermixed_args(_group_seeds(given))
    args.argv = given
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from curricula import CurriculumError, available_curricula, load_curriculum
    from metarl.run_dir import CheckpointError, RunDirError

    from .config import SequenceConfig
    from .sequence import (
        STATUS_FILE,
        SequenceDiverged,
        metrics_table,
        resume_sequence,
        run_sequence,
    )

    if args.list:
        for name in available_curricula():
            c = load_curriculum(name)
            print(
                f"{name:22s} {len(c.stages):3d} stages  {c.total_steps:>12,} steps  "
                f"{c.description.splitlines()[0][:70] if c.description else ''}"
            )
        return 0
    if args.docs:
        for key, doc in field_docs(SequenceConfig).items():
            print(f"{key:40s} {' '.join(doc.split())}")
        return 0
    config, overrides = parse_config_args(args.config, args.overrides)
    if args.seeds is not None:
        return _run_seeds(config, overrides, args)
    try:
        if args.resume:
            if config is not None:
                overrides = [config, *overrides]
            result = resume_sequence(args.resume, overrides)
        else:
            result = run_sequence(config, overrides)
    except (ConfigError, CurriculumError) as e:
        print(f"metarl sequence: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (RunDirError, CheckpointError) as e:
        print(f"metarl sequence: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except SequenceDiverged as e:
        print(f"metarl sequence: training stopped: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    run = result.run
    status = json.loads((run.path / STATUS_FILE).read_text())
    print(
        f"run directory: {run.path} ({status['status']}, stage {status['stage']}/"
        f"{status['stages']}, iteration {status['iteration']}/{status['iterations']})"
    )
    if result.status == "finished":
        print(metrics_table(result.results), end="")
    else:
        print(f"resume with: metarl sequence --resume {run.path}")
    return 0


def _run_seeds(config, overrides: list[str], args: argparse.Namespace) -> int:
    """One run per seed (each its own run directory), then ``aggregate.json`` and
    ``aggregate.md`` in ``<run.root>/<name>-seeds-<seeds>/``. Everything is checked first."""
    from curricula import CurriculumError
    from metarl.config import load_config
    from ssm.util import write_atomic

    from .config import SequenceConfig
    from .report import aggregate_seeds, aggregate_table, plot_seed_curves
    from .sequence import SequenceDiverged, prepare_curriculum, run_sequence

    seeds = args.seeds
    problem = None
    if args.resume:
        problem = "--seeds starts new runs; resume each seed's run directory on its own"
    elif len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        problem = f"--seeds must be distinct non-negative ints, got {seeds}"
    elif any(o.startswith("seed=") for o in overrides):
        problem = "give the seeds with --seeds, not seed="
    try:
        if problem is not None:
            raise ConfigError(problem)
        cfgs = [load_config(SequenceConfig, config, [*overrides, f"seed={s}"]) for s in seeds]
        name = cfgs[0].run.name or prepare_curriculum(cfgs[0]).name
    except (ConfigError, CurriculumError) as e:
        print(f"metarl sequence: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    results, runs = [], []
    for seed, cfg in zip(seeds, cfgs):
        try:
            result = run_sequence(cfg)
        except SequenceDiverged as e:
            print(f"metarl sequence: seed {seed} stopped: {e}", file=sys.stderr)
            return EXIT_DIVERGED
        if result.status != "finished":
            print(f"seed {seed} stopped; resume with: metarl sequence --resume {result.run.path}")
            return 0
        print(f"seed {seed}: {result.run.path}")
        results.append({**result.results, "seed": seed})
        runs.append(str(result.run.path))
    agg = aggregate_seeds(results, runs)
    meta = json.loads((Path(runs[0]) / "meta.json").read_text())
    agg["meta"] = {  # the first run's provenance: the command, commit and machine
        "command": "metarl sequence " + " ".join(args.argv),
        **{k: meta.get(k) for k in ("git_commit", "git_dirty", "python", "torch", "hostname")},
        "cpus": os.cpu_count(),
        "wall_time_s": sum(r["wall_time_s"] for r in results),
    }
    out = Path(cfgs[0].run.root) / f"{name}-seeds-{'-'.join(map(str, seeds))}"
    write_atomic(out / "aggregate.json", (json.dumps(agg, indent=1) + "\n").encode())
    table = aggregate_table(agg)
    write_atomic(out / "aggregate.md", table.encode())
    plot_seed_curves(results, out / "curves.png", f"{name}: per-stage score over seeds {seeds}")
    print(table, end="")
    print(f"wrote {out}/aggregate.json, aggregate.md and curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
