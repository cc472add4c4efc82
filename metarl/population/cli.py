"""``metarl population CONFIG.yaml [key=value ...]``: train a multi-agent population.

``metarl population --resume RUN_DIR [run.key=value ...]`` continues a stopped or killed run from
its latest checkpoint (only ``run.*`` and ``logging.*`` settings may change).

Registered as the ``population`` command of the ``metarl.commands`` entry-point group
(``metarl.population.cli:main``). ``metarl population --docs`` lists every config key.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..cli_args import parse_config_args
from ..config import ConfigError, field_docs, load_config
from .config import PopulationConfig

EXIT_CONFIG = 2
EXIT_DIVERGED = 3


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="metarl population",
        description="Train a multi-agent population (IPPO/MAPPO, communication, self-play, PBT, "
        "library skills) into a run directory.",
    )
    ap.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    ap.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. algo=ippo comm.enabled=true"
    )
    ap.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue this run from its latest checkpoint (overrides: run.* / logging.* only)",
    )
    ap.add_argument(
        "--docs", action="store_true", help="list every config key with its description"
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.docs:
        for key, doc in field_docs(PopulationConfig).items():
            print(f"{key:30s} {doc}")
        return 0
    config, overrides = parse_config_args(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .train import open_for_resume, train_population  # after parsing: --help stays fast

    try:
        if args.resume is not None:
            if config is not None:
                raise ConfigError(
                    f"--resume takes the config from the run directory; got {config!r} too"
                )
            run, cfg = open_for_resume(args.resume, overrides)
        else:
            run, cfg = None, load_config(PopulationConfig, config, overrides)
    except ValueError as e:  # ConfigError, RunDirError, a forbidden resume override
        print(f"metarl population: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        run, results = train_population(cfg, run, resume=args.resume is not None)
    except ConfigError as e:  # e.g. backend=ray without Ray installed
        print(f"metarl population: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except FloatingPointError as e:
        print(f"metarl population: training stopped: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    print(f"run directory: {run.path}")
    if results is None:
        print(f"stopped; resume with: metarl population --resume {run.path}")
    else:
        print(format_results(results))
    return 0


def format_results(results: dict) -> str:
    """The final evaluation as a few readable lines."""

    def ci(d: dict) -> str:
        return f"{d['mean']:.3f} ± {d['ci95']:.3f}"

    lines = [f"evaluation over {results['episodes']} episodes (mean ± 95% CI):"]
    for team, r in results["team_returns"].items():
        lines.append(f"  return {team}: {ci(r)}")
    for key in ("specialisation_index", "role_consistency", "diversity"):
        if key in results:
            lines.append(f"  {key}: {results[key]:.3f}")
    usage = {k: v for k, v in results.items() if k.startswith("skills/")}
    for key, v in sorted(usage.items()):
        lines.append(f"  {key}: {v:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
