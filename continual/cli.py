"""``metarl sequence``: run a continual learner through a curriculum.

    metarl sequence CONFIG.yaml [key=value ...]    run into a new run directory, print the metrics
    metarl sequence key=value ...                  the same from the defaults (nav2d_quadrants)
    metarl sequence --resume RUN_DIR [run.key=value ...]
    metarl sequence --list                          the shipped curricula
    metarl sequence --docs                          every config key with its description

Registered as a ``metarl.commands`` entry point (``sequence = "continual.cli:main"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

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
    ap.add_argument("--list", action="store_true", help="list the shipped curricula")
    ap.add_argument("--docs", action="store_true", help="list every config key")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from curricula import CurriculumError, available_curricula, load_curriculum

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


if __name__ == "__main__":
    sys.exit(main())
