#!/usr/bin/env python
"""Skill library latency: opening a 1,000-skill library, loading skills, k-NN over 10,000.

    python experiments/bench_skills.py            # 1,000 skills with files; 10,000 embeddings
    python experiments/bench_skills.py --quick    # 100 and 1,000: a smoke test

Two libraries are built in a temp directory. The first holds ``--skills`` skills with full
parameter sets (GRU SequencePolicy, d_model 32: one safetensors file each); it times
``SkillLibrary.open`` (a fresh object: read and parse the manifest), ``get`` (checksum, parse,
rebuild the network, load) and ``act``. The second holds ``--embeddings`` skills that share one
base (DIAYN-style: a manifest entry each, no files) with 64-d embeddings; it times ``open``,
``nearest`` for one query and for a batch of 100, and with a metadata filter. Writes
``experiments/results/bench_skills.json`` and ``.md`` (``bench_skills_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_io import run_metadata

from skills import ArchSpec, SkillLibrary
from skills.network import build_network
from ssm.util import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
DIM = 64


def timed(fn, repeats: int) -> dict[str, float]:
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    return {
        "min_ms": min(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": float(np.percentile(ms, 90)),
        "repeats": repeats,
    }


def spec() -> ArchSpec:
    return ArchSpec(
        {"type": "box", "shape": [39], "dtype": "float32"},
        {"type": "box", "shape": [4], "low": [-1.0] * 4, "high": [1.0] * 4},
        kind="gru",
        d_model=32,
        n_layers=2,
        encoder_hidden=64,
    )


def build_file_library(path: Path, n: int, rng: np.random.Generator) -> float:
    lib = SkillLibrary.create(path)
    arch = spec()
    params = build_network(arch).state_dict()
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        items = []
        for i in range(start, min(n, start + 100)):
            p = {k: v + 0.01 * i for k, v in params.items()}
            items.append(
                {
                    "name": f"skill/{i}",
                    "params": p,
                    "arch": arch,
                    "embedding": rng.normal(size=DIM),
                    "source": "bench",
                    "success": float(rng.uniform()),
                }
            )
        lib.add_many(items)
    return time.perf_counter() - t0


def build_embedding_library(path: Path, n: int, rng: np.random.Generator) -> float:
    lib = SkillLibrary.create(path)
    arch = spec()
    params = build_network(arch).state_dict()
    lib.add_base("shared", params, arch)
    emb = rng.normal(size=(n, DIM))
    t0 = time.perf_counter()
    lib.add_many(
        {
            "name": f"skill/{i}",
            "params": params,
            "arch": arch,
            "embedding": emb[i],
            "base": "shared",
            "source": "diayn" if i % 2 else "maml",
            "success": float(rng.uniform()),
        }
        for i in range(n)
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skills", type=int, default=1_000)
    ap.add_argument("--embeddings", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="100 skills, 1,000 embeddings")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.skills, args.embeddings, args.repeats = 100, 1_000, 5
    out = args.out or HERE / "results" / f"bench_skills{'_quick' if args.quick else ''}.json"
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_skills_") as tmp:
        files = Path(tmp) / "files"
        build_s = build_file_library(files, args.skills, rng)
        lib = SkillLibrary.open(files)
        names = lib.list()
        obs = rng.normal(size=39).astype(np.float32)
        skill = lib.get(names[0])
        _, state = skill.act(obs)
        size = sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
        rows += [
            {"case": f"add_many, {args.skills} skills (batches of 100)", "min_ms": 1e3 * build_s},
            {
                "case": f"open, {args.skills} skills",
                **timed(lambda: SkillLibrary.open(files), args.repeats),
            },
            {
                "case": "get (checksum + parse + rebuild + load)",
                **timed(lambda: lib.get(names[int(rng.integers(len(names)))]), args.repeats),
            },
            {"case": "act, one step", **timed(lambda: skill.act(obs, state), 10 * args.repeats)},
        ]  # fmt: skip

        embs = Path(tmp) / "embeddings"
        build_e = build_embedding_library(embs, args.embeddings, rng)
        elib = SkillLibrary.open(embs)
        q1, qb = rng.normal(size=DIM), rng.normal(size=(100, DIM))
        elib.nearest(q1, k=5)  # builds the stacked, normalised matrix once
        few = max(3, args.repeats // 4)
        rows += [
            {"case": f"add_many, {args.embeddings} skills on one base", "min_ms": 1e3 * build_e},
            {
                "case": f"open, {args.embeddings} skills",
                **timed(lambda: SkillLibrary.open(embs), few),
            },
            {
                "case": "open + first nearest (stacks the matrix)",
                **timed(lambda: SkillLibrary.open(embs).nearest(q1, k=5), few),
            },
            {
                "case": f"nearest k=5, 1 query over {args.embeddings}",
                **timed(lambda: elib.nearest(q1, k=5), 10 * args.repeats),
            },
            {
                "case": f"nearest k=5, 100 queries over {args.embeddings}",
                **timed(lambda: elib.nearest(qb, k=5), args.repeats),
            },
            {
                "case": "nearest k=5, 1 query, filter source=diayn",
                **timed(lambda: elib.nearest(q1, k=5, source="diayn"), args.repeats),
            },
        ]  # fmt: skip
        manifest_bytes = (embs / "manifest.json").stat().st_size

    meta = {**run_metadata(), "quick": args.quick, "embedding_dim": DIM}
    payload = {
        **meta,
        "skills": args.skills,
        "embeddings": args.embeddings,
        "file_library_bytes": size,
        "embedding_manifest_bytes": manifest_bytes,
        "results": rows,
    }
    write_json_atomic(out, payload)

    def fmt(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if key in r else ""

    lines = [
        "# Skill library: open, load, act and k-NN latency",
        "",
        f"- command: `{meta['command']}`",
        f"- commit: `{meta['commit']}`",
        f"- machine: {meta['machine']} (shared CPU: timings are noisy)",
        f"- {args.skills} skills with files: {size / 1e6:.1f} MB on disk; "
        f"{args.embeddings}-skill manifest: {manifest_bytes / 1e6:.1f} MB; embeddings {DIM}-d",
        "",
        "| case | min ms | median ms | p90 ms | repeats |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['case']} | {fmt(r, 'min_ms')} | {fmt(r, 'median_ms')} | {fmt(r, 'p90_ms')} | "
        f"{r.get('repeats', 1)} |"
        for r in rows
    ]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
