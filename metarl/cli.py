"""The ``metarl`` command.

    metarl train CONFIG.yaml [key=value ...]     train into a new run directory
    metarl resume RUN_DIR [run.key=value ...]    continue a run from its latest checkpoint
    metarl eval RUN_DIR [--checkpoint F] [eval.key=value ...]
    metarl adapt-eval RUN_DIR [--tasks test] [--steps 0..S] [--episodes K] [--seeds N]
                      [--baselines [--multitask RUN_DIR]]
                                                 few-shot adaptation curves (+ baselines)
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

from .cli_args import parse_config_args
from .config import ConfigError, config_to_dict, field_docs, load_config
from .run_dir import CheckpointError, RunDirError

EXIT_DIVERGED = 3


def _plugin_commands() -> dict:
    return {ep.name: ep for ep in entry_points(group="metarl.commands")}


def _positive(kind: type):
    """An argparse type: a number of ``kind`` that must be > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


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
    a = sub.add_parser(
        "adapt-eval",
        help="return/success before and after each adaptation step on held-out tasks",
        description="Few-shot adaptation curves of a run (maml: gradient steps; rl2: episodes of "
        "a trial; ppo: fine-tuning steps), mean ± 95% CI over tasks and seeds; writes "
        "adapt_eval.json, adapt_eval.md and plots/adapt_eval.png into the run directory.",
    )
    a.add_argument("run_dir")
    a.add_argument("--tasks", default="test", choices=["train", "test"], help="task split")
    a.add_argument(
        "--num-tasks",
        type=_positive(int),
        default=None,
        help="how many tasks (default: eval.tasks)",
    )
    a.add_argument("--steps", default="1", help="'S' (steps 0..S) or 'A..B' (default: 1)")
    a.add_argument(
        "--episodes",
        type=_positive(int),
        default=None,
        help="support episodes per task and step (default: meta.episodes_per_task); "
        "rl2: trials per task",
    )
    a.add_argument("--seeds", type=_positive(int), default=3, help="rollout seeds (default: 3)")
    a.add_argument(
        "--baselines",
        action="store_true",
        help="add a fine-tuned multi-task PPO policy and a from-scratch init, same samples",
    )
    a.add_argument(
        "--multitask",
        default=None,
        metavar="RUN_DIR",
        help="PPO run to use as the multi-task baseline (default: find or train one under "
        "RUN_DIR/baselines with the run's env-step budget)",
    )
    a.add_argument(
        "--inner-lr",
        type=_positive(float),
        default=None,
        help="fine-tuning lr (default: meta.inner_lr)",
    )
    a.add_argument("--finetune-objective", default="vpg", choices=["vpg", "ppo"])
    a.add_argument("--checkpoint", default="latest", help="checkpoint file (default: latest)")
    a.add_argument(
        "--output",
        default="adapt_eval",
        metavar="NAME",
        help="name of the report: RUN_DIR/NAME.json, NAME.md, plots/NAME.png (default: "
        "adapt_eval); an existing report is kept unless --overwrite",
    )
    a.add_argument("--overwrite", action="store_true", help="replace an existing report NAME")
    c = sub.add_parser("config", help="print the resolved training config")
    c.add_argument("config", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--docs", action="store_true", help="list every key with its description")
    for name, ep in sorted(plugins.items()):
        p = sub.add_parser(name, help=f"(from {ep.value})", add_help=False)
        p.add_argument("argv", nargs=argparse.REMAINDER)
    return ap


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
            path, overrides = parse_config_args(args.config, args.overrides)
            cfg = load_config(runner.TrainConfig, path, overrides)
            if args.docs:
                for key, doc in field_docs(runner.TrainConfig).items():
                    print(f"{key:34s} {doc}")
            else:
                print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.command == "adapt-eval":
            from . import few_shot

            return _adapt_eval(args, few_shot)
        if args.command == "train":
            path, overrides = parse_config_args(args.config, args.overrides)
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
    except (RunDirError, CheckpointError) as e:
        print(f"metarl {args.command}: {e}", file=sys.stderr)
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


def _adapt_eval(args: argparse.Namespace, few_shot) -> int:
    from .meta.adaptation import parse_steps

    try:
        steps = parse_steps(args.steps)
    except ValueError as e:
        print(f"metarl adapt-eval: {e}", file=sys.stderr)
        return 2
    if args.multitask is not None and not args.baselines:
        print("metarl adapt-eval: --multitask needs --baselines", file=sys.stderr)
        return 2
    results = few_shot.adapt_evaluate(
        args.run_dir,
        split=args.tasks,
        steps=steps,
        episodes=args.episodes,
        seeds=args.seeds,
        num_tasks=args.num_tasks,
        baselines=args.baselines,
        multitask=args.multitask,
        inner_lr=args.inner_lr,
        finetune_objective=args.finetune_objective,
        checkpoint=args.checkpoint,
        output=args.output,
        overwrite=args.overwrite,
        progress=True,
    )
    print(few_shot.adapt_eval_markdown(results))
    name = args.output
    print(f"wrote {results['run']}/{name}.json, {name}.md and plots/{name}.png")
    return 0


def format_results(results: dict) -> str:
    """The evaluation summary as a few readable lines."""

    def ci(d: dict) -> str:
        return f"{d['mean']:8.3f} ± {d['ci95']:.3f}"

    if results.get("algo") == "maml":  # adaptation curve: one line per inner step
        lines = [
            f"evaluation: {results['family']} ({results['meta_algo']}), {results['tasks']} "
            f"{results['split']} tasks x {len(results['seeds'])} seeds, {results['episodes']} "
            "episodes per step, mean ± 95% CI"
        ]
        for i, step in enumerate(results["steps"]):
            gain = f"   gain {ci(results['improvement'][i])}" if step else ""
            lines.append(
                f"  after {step} steps: return {ci(results['return'][i])}   "
                f"success {ci(results['success'][i])}{gain}"
            )
        return "\n".join(lines)

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
