"""The ``metarl`` command.

    metarl train CONFIG.yaml [key=value ...]     train into a new run directory
    metarl resume RUN_DIR [run.key=value ...]    continue a run from its latest checkpoint
    metarl eval RUN_DIR [--checkpoint F] [eval.key=value ...]
    metarl config [CONFIG.yaml] [key=value ...]  print the resolved config (and --docs)

Other packages add subcommands through the ``metarl.commands`` entry-point group (a
``module:function`` taking ``argv`` and returning an exit code), so ``metarl`` never imports the
layers above it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import entry_points

import yaml

from .config import ConfigError, config_to_dict, field_docs, load_config

EXIT_DIVERGED = 3


def _plugin_commands() -> dict:
    return {ep.name: ep for ep in entry_points(group="metarl.commands")}


def _parser(plugins: dict) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="metarl", description="Continual meta-RL with SSM policies: experiment runner."
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="train from a YAML config into a new run directory")
    t.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl2.total_steps=100000")
    r = sub.add_parser("resume", help="continue a run from its latest checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", help="run.* / logging.* overrides only")
    e = sub.add_parser("eval", help="evaluate a run's policy on held-out tasks")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", default="latest", help="checkpoint file (default: latest)")
    e.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.tasks=500")
    c = sub.add_parser("config", help="print the resolved training config")
    c.add_argument("config", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--docs", action="store_true", help="list every key with its description")
    for name, ep in sorted(plugins.items()):
        p = sub.add_parser(name, help=f"(from {ep.value})", add_help=False)
        p.add_argument("argv", nargs=argparse.REMAINDER)
    return ap


def _split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """``metarl train a=1`` has no config file: the first "key=value" is an override."""
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config, *overrides]
    return config, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plugins = _plugin_commands()
    if argv and argv[0] in plugins:
        return int(plugins[argv[0]].load()(argv[1:]) or 0)
    args = _parser(plugins).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from . import runner  # after argument parsing, so `metarl --help` stays fast

    try:
        if args.command == "config":
            path, overrides = _split_config_arg(args.config, args.overrides)
            cfg = load_config(runner.TrainConfig, path, overrides)
            if args.docs:
                for key, doc in field_docs(runner.TrainConfig).items():
                    print(f"{key:34s} {doc}")
            else:
                print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.command == "train":
            path, overrides = _split_config_arg(args.config, args.overrides)
            run = runner.train(path, overrides)
        elif args.command == "resume":
            run = runner.resume(args.run_dir, args.overrides)
        else:
            results = runner.evaluate(args.run_dir, args.checkpoint, overrides=args.overrides)
            print(format_results(results))
            return 0
    except ConfigError as e:
        print(f"metarl: config error: {e}", file=sys.stderr)
        return 2
    except runner.TrainingDiverged as e:
        print(f"metarl: training stopped: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    status = json.loads((run.path / runner.STATUS_FILE).read_text())
    print(f"run directory: {run.path} ({status['status']}, iteration {status['iteration']})")
    if status["status"] == "finished":
        print(format_results(json.loads((run.path / "eval.json").read_text())))
    else:
        print(f"resume with: metarl resume {run.path}")
    return 0


def format_results(results: dict) -> str:
    """The evaluation summary as a few readable lines."""

    def ci(d: dict) -> str:
        return f"{d['mean']:8.3f} ± {d['ci95']:.3f}"

    lines = [
        f"evaluation: {results['family']} ({results['algo']}), {results['tasks']} "
        f"{results['split']} tasks, mean ± 95% CI"
    ]
    for i, ret in enumerate(results["episode_return"]):
        suc = f"   success {ci(results['success'][i])}" if "success" in results else ""
        lines.append(f"  episode {i + 1}: return {ci(ret)}{suc}")
    if "improvement_last_minus_first" in results:
        lines.append(f"  last - first episode: {ci(results['improvement_last_minus_first'])}")
    if "regret" in results:
        lines.append("  cumulative regret (lower is better):")
        for name, r in results["regret"].items():
            lines.append(f"    {name:10s} {ci(r)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
