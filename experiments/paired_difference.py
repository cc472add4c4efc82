#!/usr/bin/env python
"""The paired difference of one metric between two ``metarl sequence --seeds`` aggregates.

    python experiments/paired_difference.py A/aggregate.json B/aggregate.json \
        --metric post_switch_acting_return --out experiments/results/NAME.json

Both aggregates must hold the same seeds; the difference ``A - B`` is taken per seed and
summarised as mean ± 95% CI over seeds (Student-t). Writes JSON (and markdown beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from results_io import run_metadata

from ssm.util import mean_ci, write_json_atomic, write_text_atomic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="aggregate.json of arm A")
    ap.add_argument("b", type=Path, help="aggregate.json of arm B")
    ap.add_argument("--metric", required=True, help="a key of the aggregates' metrics")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (markdown beside it)")
    args = ap.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    if a["seeds"] != b["seeds"]:
        print(f"error: the arms ran other seeds: {a['seeds']} vs {b['seeds']}", file=sys.stderr)
        return 2
    if args.metric not in a["metrics"] or args.metric not in b["metrics"]:
        print(f"error: {args.metric!r} is not in both aggregates", file=sys.stderr)
        return 2
    va, vb = a["metrics"][args.metric]["values"], b["metrics"][args.metric]["values"]
    diff = [x - y for x, y in zip(va, vb)]
    out = {
        **run_metadata(),
        "metric": args.metric,
        "seeds": a["seeds"],
        "a": {"aggregate": str(args.a), "command": a.get("meta", {}).get("command"), "values": va},
        "b": {"aggregate": str(args.b), "command": b.get("meta", {}).get("command"), "values": vb},
        "difference": {"values": diff, **mean_ci(diff)},
    }
    d = out["difference"]
    text = (
        f"# {args.metric}: A - B, paired by seed\n\n"
        f"A: `{out['a']['command']}`\n\nB: `{out['b']['command']}`\n\n"
        f"| seeds | A | B | A - B (mean ± 95% CI, Student-t) |\n| --- | --- | --- | --- |\n"
        f"| {a['seeds']} | {[round(x, 3) for x in va]} | {[round(x, 3) for x in vb]} | "
        f"{d['mean']:.3f} ± {d['ci95']:.3f} |\n"
    )
    print(text, end="")
    if args.out is not None:
        write_json_atomic(args.out, out)
        write_text_atomic(args.out.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
