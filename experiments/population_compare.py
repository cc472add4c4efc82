#!/usr/bin/env python
"""The multi-agent population, compared: 3 seeds per arm, equal budgets within a comparison.

    python experiments/population_compare.py                 # the full comparison
    python experiments/population_compare.py --quick         # smoke test, about a minute
    python experiments/population_compare.py --library DIR   # use an existing goto-skill library
    python experiments/population_compare.py --arms spread/mappo spread/ippo --seeds 1 2 3 4 5 \
        --iterations spread=800 --merge                      # re-run some arms, keep the rest

``--merge`` keeps the runs of the existing results file that this invocation does not redo (a run
is identified by arm, seed and budget) and re-summarises everything; every run records which
invocation (command, commit, machine) produced it. A comparison is made at every budget at which
all its arms were run, never across budgets.

The full comparison is 24 runs (8 arms × 3 seeds) plus a ~15 s skill library, about 28
CPU-minutes in all: ~15 minutes with the default 2 workers on two otherwise idle cores (measured
per-iteration CPU costs: simple_spread 0.14-0.35 s, role gathering 0.09-0.2 s). On a shared
machine it takes proportionally longer; the results record both wall and CPU time.

Comparisons (every arm trains from its own seed; mean ± 95% CI over seeds, Student t):

1. **MAPPO vs IPPO** on mpe2 simple_spread (3 agents, shared GRU actor with agent ids; MAPPO adds
   the centralised critic over the joint observation).
2. **Communication ablation** on simple_spread: MAPPO with the differentiable channel (mode
   "prev": messages from recurrent features, read with attention at the next step) vs without.
3. **Specialisation** on role gathering (3 agents, 3 resource types): a heterogeneous population
   (Mamba d16, S4D d24, GRU d32, independent parameters, agent ids) vs a homogeneous
   parameter-shared one (one GRU, no ids). Specialisation index (division of labour: agent-role
   mutual information over its maximum, see ``metarl.population.analysis``), role consistency
   and behavioural diversity of the final policies, and their return.
4. **Library skills vs from scratch** on role gathering: option agents choosing among library
   "goto resource k" skills every 5 steps, agents initialised from one library skill (goto0, so
   roles must still be learned), and agents from scratch (same GRU architecture as the skills).

Returns are the final evaluation's mean episodic team return (32 episodes, sampled actions);
``train_return`` is the mean over the last 20% of training iterations. Results go to
``experiments/results/population_compare.{json,md}`` (``--quick``: beside its run directories under
``--root``, since a smoke test's numbers are not results), run directories to ``--root``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from results_io import run_metadata

from ssm.util import mean_ci, student_t_quantile, write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"

# -- the arms ---------------------------------------------------------------------------------

SPREAD = [
    "env.name=simple_spread",
    "share_params=true",
    "agents=[{kind: gru, d_model: 32, encoder_hidden: 64}]",
]
ROLE = ["env.name=role_gathering"]
HETEROGENEOUS = (
    "agents=[{kind: mamba, d_model: 16, layer: {d_state: 8, d_conv: 3}}, "
    "{kind: s4d, d_model: 24, layer: {d_state: 16}}, {kind: gru, d_model: 32}]"
)
GRU32 = "agents=[{kind: gru, d_model: 32, encoder_hidden: 64}]"

ARMS: dict[str, list[str]] = {
    "spread/mappo": [*SPREAD, "algo=mappo"],
    "spread/ippo": [*SPREAD, "algo=ippo"],
    "spread/mappo+comm": [*SPREAD, "algo=mappo", "comm.enabled=true", "comm.mode=prev"],
    "role/heterogeneous": [*ROLE, HETEROGENEOUS],
    "role/homogeneous-shared": [*ROLE, GRU32, "share_params=true", "agent_ids=false"],
    "role/scratch": [*ROLE, GRU32],
    "role/skill-options": [
        *ROLE,
        "agents=[{kind: gru, d_model: 32, encoder_hidden: 64, options: true}]",
        "skills.option_every=5",
    ],
    "role/skill-init": [*ROLE, "agents=[{init_skill: goto0}]"],
}
NEEDS_LIBRARY = ("role/skill-options", "role/skill-init")

COMPARISONS = [
    ("MAPPO vs IPPO (simple_spread)", ["spread/mappo", "spread/ippo"], ["return"]),
    ("communication ablation (simple_spread)", ["spread/mappo+comm", "spread/mappo"], ["return"]),
    (
        "specialisation: heterogeneous vs homogeneous shared (role gathering)",
        ["role/heterogeneous", "role/homogeneous-shared"],
        ["specialisation_index", "role_consistency", "diversity", "return"],
    ),
    (
        "library skills vs from scratch (role gathering)",
        ["role/skill-options", "role/skill-init", "role/scratch"],
        ["return", "auc_return", "specialisation_index"],
    ),
]

# Budgets: iterations of num_envs episodes of episode_len steps, per arm family.
FULL = {"spread": 300, "role": 400, "num_envs": 8, "episode_len": 25, "eval_episodes": 32}
QUICK = {"spread": 3, "role": 3, "num_envs": 2, "episode_len": 8, "eval_episodes": 2}


def run_budget(arm: str, budget: dict) -> dict:
    """The budget one run of ``arm`` gets (what identifies its runs beside arm and seed)."""
    keys = ("num_envs", "episode_len", "eval_episodes")
    return {"iterations": budget[arm.split("/")[0]], **{k: budget[k] for k in keys}}


def overrides_for(arm: str, seed: int, budget: dict, root: Path, library: str) -> list[str]:
    family = arm.split("/")[0]
    out = [
        *ARMS[arm],
        f"seed={seed}",
        f"iterations={budget[family]}",
        f"env.num_envs={budget['num_envs']}",
        f"env.episode_len={budget['episode_len']}",
        f"eval_episodes={budget['eval_episodes']}",
        f"run.root={root / arm.replace('/', '_') / f'it{budget[family]}'}",
        f"run.name=seed{seed}",
        "run.threads=1",
        "logging.progress=false",
        f"analysis.every={max(1, budget[family] // 20)}",
    ]
    if arm in NEEDS_LIBRARY:
        out.append(f"skills.library={library}")
    return out


def run_arm(job: tuple[str, int, list[str], dict]) -> dict:
    """One training run (in a worker process); its headline numbers."""
    import torch

    from metarl.config import load_config
    from metarl.population import PopulationConfig, train_population

    torch.set_num_threads(1)
    arm, seed, overrides, budget = job
    cfg = load_config(PopulationConfig, None, overrides)
    start, cpu = time.perf_counter(), time.process_time()
    run, results = train_population(cfg)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = run.read_metrics()
    returns = [r["episodic_return"] for r in rows if r.get("episodic_return") is not None]
    tail = returns[-max(1, len(returns) // 5) :]
    return {
        "arm": arm,
        "seed": seed,
        "budget": budget,
        "run_dir": str(run.path),
        "wall_s": wall,
        "cpu_s": cpu,
        "return": results["episodic_return"]["mean"],
        "train_return": float(np.mean(tail)),
        "auc_return": float(np.mean(returns)),
        "specialisation_index": results.get("specialisation_index", math.nan),
        "role_consistency": results.get("role_consistency", math.nan),
        "role_counts": results.get("role_counts"),
        "diversity": results.get("diversity", math.nan),
        "skill_usage": {k: v for k, v in results.items() if k.startswith("skills/")},
        "hparams": results["hparams"],
    }


# -- statistics -------------------------------------------------------------------------------


def difference_ci(a: list[float], b: list[float]) -> dict:
    """Mean(a) - mean(b) with a Welch 95% CI."""
    a = np.asarray([v for v in a if math.isfinite(v)], np.float64)
    b = np.asarray([v for v in b if math.isfinite(v)], np.float64)
    if len(a) < 2 or len(b) < 2:
        return {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1
    half = student_t_quantile(0.975, max(1, int(df))) * se  # df floored, as before
    return {"diff": float(a.mean() - b.mean()), "ci95": half, "statistic": "welch-t"}


METRICS = [
    "return",
    "train_return",
    "auc_return",
    "specialisation_index",
    "role_consistency",
    "diversity",
    "wall_s",
    "cpu_s",
]


def budget_key(budget: dict) -> str:
    return json.dumps(budget, sort_keys=True)


def summarise(runs: list[dict]) -> dict:
    """Mean ± CI per (arm, budget); each comparison at every budget all its arms were run at."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["arm"], budget_key(r["budget"])), []).append(r)
    arms = [
        {
            "arm": arm,
            "budget": json.loads(b),
            "seeds": sorted(r["seed"] for r in rs),
            **{m: mean_ci([r.get(m, math.nan) for r in rs]) for m in METRICS},
        }
        for (arm, b), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]
    comparisons = []
    for title, names, shown in COMPARISONS:
        shared = set.intersection(*({b for a, b in groups if a == n} for n in names))
        for b in sorted(shared, key=lambda b: -json.loads(b)["iterations"]):
            by_arm = {n: groups[(n, b)] for n in names}
            diffs = {
                f"{names[0]} - {other}": {
                    m: difference_ci(
                        [r.get(m, math.nan) for r in by_arm[names[0]]],
                        [r.get(m, math.nan) for r in by_arm[other]],
                    )
                    for m in shown
                }
                for other in names[1:]
            }
            comparisons.append(
                {
                    "title": title,
                    "budget": json.loads(b),
                    "arms": names,
                    "metrics": shown,
                    "differences": diffs,
                }
            )
    return {"arms": arms, "comparisons": comparisons}


def fmt(d: dict) -> str:
    if not math.isfinite(d.get("mean", math.nan)):
        return "n/a"
    ci = d.get("ci95", math.nan)
    return f"{d['mean']:.3f} ± {ci:.3f}" if math.isfinite(ci) else f"{d['mean']:.3f}"


def markdown(payload: dict) -> str:
    s = payload["summary"]
    lines = ["# Population comparison", "", "Invocations whose runs are summarised here:", ""]
    for i, inv in enumerate(payload["invocations"]):
        lines.append(
            f"{i}. `{inv['command']}`: commit {inv['commit']}; arms {', '.join(inv['arms'])}; "
            f"seeds {inv['seeds']}; {inv['wall_s'] / 60:.1f} min wall with {inv['workers']} "
            f"workers ({inv['cpu_s'] / 60:.1f} CPU-minutes in the runs); "
            f"{inv['machine'].get('cpus')} CPUs, torch {inv['machine'].get('torch')}."
        )
    lines += [
        "",
        "Mean ± 95% CI over seeds (Student t); differences with a Welch 95% CI. A budget is "
        "`iterations` × `num_envs` episodes of `episode_len` steps; every arm of a comparison "
        "has the same budget. The specialisation index is I(agent; role) / I_max(N, K): 1 for "
        "agents in distinct, consistent roles, 0 when the role does not depend on the agent; "
        "role consistency is 1 - mean_i H(role | agent i) / log K (1 also when every agent "
        "takes the same role).",
        "",
    ]
    for comp in s["comparisons"]:
        b = comp["budget"]
        lines += [
            f"## {comp['title']}: {b['iterations']} iterations",
            "",
            f"Budget {json.dumps(b)}.",
            "",
        ]
        header = "| arm | seeds | " + " | ".join(comp["metrics"]) + " | wall s | cpu s |"
        lines += [header, "|" + "---|" * (len(comp["metrics"]) + 4)]
        for arm in comp["arms"]:
            (a,) = [x for x in s["arms"] if x["arm"] == arm and x["budget"] == b]
            cells = " | ".join(fmt(a[m]) for m in comp["metrics"])
            lines.append(
                f"| {arm} | {len(a['seeds'])} | {cells} | {a['wall_s']['mean']:.0f} | "
                f"{a['cpu_s']['mean']:.0f} |"
            )
        lines.append("")
        for name, diffs in comp["differences"].items():
            parts = []
            for m, d in diffs.items():
                ci = d.get("ci95", math.nan)
                if not math.isfinite(d["diff"]):
                    parts.append(f"{m} n/a")
                    continue
                parts.append(
                    f"{m} {d['diff']:+.3f}" + (f" ± {ci:.3f}" if math.isfinite(ci) else "")
                )
            lines.append(f"- {name}: " + "; ".join(parts) + " (Welch 95% CI)")
        lines.append("")
    return "\n".join(lines)


def previous_runs(path: Path) -> tuple[list[dict], list[dict]]:
    """The runs and invocations of an existing results file (an older file without per-run
    budgets is read as one invocation with its one budget)."""
    if not path.exists():
        return [], []
    old = json.loads(path.read_text())
    if "invocations" in old:
        return old["runs"], old["invocations"]
    invocation = {
        **old["meta"],
        "workers": old["workers"],
        "seeds": old["seeds"],
        "arms": sorted(old["arms"]),
        "budget": old["budget"],
        "library": old.get("library"),
        "wall_s": old["wall_s"],
        "cpu_s": old["cpu_s"],
    }
    runs = []
    for r in old["runs"]:
        r = {**r, "budget": run_budget(r["arm"], old["budget"]), "invocation": 0}
        # such files predate the division-of-labour index: theirs is now role_consistency
        r["role_consistency"] = r.pop("specialisation_index", math.nan)
        r["specialisation_index"] = math.nan
        runs.append(r)
    return runs, [invocation]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets, one seed: a smoke test")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 1 2 3 (quick: 1)")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each)")
    ap.add_argument("--library", default=None, help="goto-skill library (default: build one)")
    ap.add_argument("--root", default="runs/population_compare", help="run directories go here")
    ap.add_argument("--arms", nargs="+", default=None, help=f"subset of {sorted(ARMS)}")
    ap.add_argument(
        "--iterations",
        nargs="+",
        default=[],
        metavar="FAMILY=N",
        help="training iterations per arm family, e.g. spread=800 (default: the budget's)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of the existing results file that this invocation does not redo",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="results path without suffix (default: experiments/results/population_compare)",
    )
    args = ap.parse_args()
    budget = dict(QUICK if args.quick else FULL)
    for item in args.iterations:
        family, _, n = item.partition("=")
        if family not in ("spread", "role") or not n.isdigit() or int(n) < 1:
            ap.error(f"--iterations takes spread=N or role=N, got {item!r}")
        budget[family] = int(n)
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    root = Path(args.root) / ("quick" if args.quick else "full")
    arms = args.arms or list(ARMS)
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {sorted(ARMS)}")
    start = time.perf_counter()
    library = args.library
    if library is None and any(a in NEEDS_LIBRARY for a in arms):
        from population_skills import build_goto_library

        library = str(build_goto_library(root / "goto_library", steps=40 if args.quick else 300))
    jobs = [
        (a, s, overrides_for(a, s, budget, root, library), run_budget(a, budget))
        for a in arms
        for s in seeds
    ]
    print(f"{len(jobs)} runs on {args.workers} workers")
    runs = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(run_arm, jobs):
            runs.append(r)
            print(
                f"[{len(runs)}/{len(jobs)}] {r['arm']} seed {r['seed']}: return "
                f"{r['return']:.3f}, SI {r['specialisation_index']:.3f}, {r['wall_s']:.0f} s "
                f"({r['cpu_s']:.0f} s cpu)",
                flush=True,
            )
    # a smoke test's numbers are not results: they stay beside its run directories
    if args.out is not None:
        out = Path(args.out)
    elif args.quick:
        out = root / "population_compare_quick"
    else:
        out = RESULTS / "population_compare"
    kept, invocations = previous_runs(out.with_suffix(".json")) if args.merge else ([], [])
    redone = {(r["arm"], r["seed"], budget_key(r["budget"])) for r in runs}
    kept = [r for r in kept if (r["arm"], r["seed"], budget_key(r["budget"])) not in redone]
    used = sorted({r["invocation"] for r in kept})
    invocations = [invocations[i] for i in used]
    kept = [{**r, "invocation": used.index(r["invocation"])} for r in kept]
    meta = run_metadata()
    invocations.append(
        {
            **meta,
            "workers": args.workers,
            "seeds": seeds,
            "arms": arms,
            "budget": budget,
            "library": library,
            "wall_s": time.perf_counter() - start,
            "cpu_s": sum(r["cpu_s"] for r in runs),
        }
    )
    runs = kept + [{**r, "invocation": len(invocations) - 1} for r in runs]
    runs.sort(key=lambda r: (r["arm"], r["budget"]["iterations"], r["seed"]))
    payload = {
        "meta": meta,
        "quick": args.quick,
        "arms": ARMS,
        "invocations": invocations,
        "summary": summarise(runs),
        "runs": runs,
    }
    write_json_atomic(out.with_suffix(".json"), payload)
    write_text_atomic(out.with_suffix(".md"), markdown(payload) + "\n")
    print(markdown(payload))
    print(f"wrote {out}.json/.md in {invocations[-1]['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
