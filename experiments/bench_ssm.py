#!/usr/bin/env python
"""Benchmark the ``ssm`` sequence layers against PyTorch's GRU, all in one run.

What is measured (every ratio is against a baseline timed in the same run, interleaved with the
layer it is compared to, so that load changes on a shared machine hit both alike):

1. Training pass (forward + backward of ``y.sum()``) at B=16, D=64, L in {256, 1024} for each kind,
   against ``torch.nn.GRU(64, 64, batch_first=True)``. ``speedup = t_GRU / t_kind`` (> 1: faster
   than GRU). "mamba_torch" is Mamba with ``backend="torch"`` (the pure-PyTorch reference loop),
   timed with fewer repeats where it is slow (as many as fit in a per-cell time budget);
   "mamba_chunked" is Mamba with ``backend="chunked"`` (the chunked torch scan, the CUDA path for
   calls with an initial state or resets), likewise; ``chunked_vs_reference`` in the JSON is
   t(mamba_torch) / t(mamba_chunked) per L. "mamba2" is Mamba-2 (chunked SSD form).
2. Per-step inference latency (``torch.inference_mode()``) of each kind's ``.step`` at B=1 and
   B=64 against ``torch.nn.GRUCell(64, 64)``. ``ratio = t_kind / t_GRUCell`` (< 1: faster).
3. Peak memory of one training pass, per kind, each in a fresh subprocess (see ``MEMORY_METHOD``).
4. Reference points for Mamba quoted in the issue (not measured here).
5. Targets, each reported as pass / fail.

Usage::

    python experiments/bench_ssm.py                 # full run (a few minutes on 2 cores)
    python experiments/bench_ssm.py --quick --out /tmp/b.json   # smoke test, < 1 min
    python experiments/bench_ssm.py --kinds s4d,mamba --repeats 5

Writes JSON (``--out``, default ``experiments/results/bench_ssm.json``) and a markdown report next
to it (same name, ``.md``), and prints the markdown to stdout. Both are written atomically.
Exit status: 0, or 2 when some measurement raised (the error is recorded in the JSON); a target
that fails does not change the exit status.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from bench_machine import ForeignLoad, git_info, log, machine_info, wait_for_quiet
from bench_ssm_report import eval_targets, find, to_markdown
from bench_ssm_settings import (
    ALL_KINDS,
    B_TRAIN,
    D_MODEL,
    MAMBA2,
    MEMORY_METHOD,
    NOISY_CORES,
    REFERENCE_NOTE,
    REFERENCE_POINTS,
    SLOW_KINDS,
    STEP_BATCHES,
    STEP_METHOD,
    TRAIN_METHOD,
)
from torch import nn

from ssm.util import write_text_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "results" / "bench_ssm.json"


# -- layers ---------------------------------------------------------------------------------------
def build(kind: str, d_model: int = D_MODEL) -> nn.Module:
    """A layer of ``kind``: an ssm kind, "mamba_torch", or "gru_baseline" (torch.nn.GRU)."""
    if kind == "gru_baseline":
        return nn.GRU(d_model, d_model, batch_first=True)
    import ssm

    if kind == "mamba_torch":
        return ssm.make_layer("mamba", d_model, d_state=16, expand=2, backend="torch")
    if kind == "mamba":
        return ssm.make_layer("mamba", d_model, d_state=16, expand=2, backend="auto")
    if kind == "mamba_chunked":
        return ssm.make_layer("mamba", d_model, d_state=16, expand=2, backend="chunked")
    if kind == "mamba2":
        return ssm.make_layer("mamba2", d_model, **MAMBA2)
    return ssm.make_layer(kind, d_model)


def train_pass(m: nn.Module, x: torch.Tensor) -> float:
    """Seconds for forward + backward of y.sum(); grads cleared before, outside the timing."""
    m.zero_grad(set_to_none=True)
    x.grad = None
    t0 = time.perf_counter()
    y = m(x)[0]  # ssm layers return (y, state), nn.GRU returns (y, h_n)
    y.sum().backward()
    return time.perf_counter() - t0


# -- helpers --------------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def error_record(e: BaseException) -> dict[str, str]:
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}


class Screen:
    """Drops timing samples taken while other processes were busy, within a retry budget.

    Every sample (a baseline/kind pair) is taken inside :class:`ForeignLoad`; a sample during
    which other processes used more than ``NOISY_CORES`` is thrown away and retaken once they are
    quiet again (or after ``max_pause_s``), until the run-wide budget of ``budget_s`` seconds
    (time spent on dropped samples and pauses) or the per-cell cap of
    ``max_drop_factor * repeats`` drops is used up. After that, noisy samples are kept and the
    cell is marked noisy.
    """

    def __init__(
        self,
        budget_s: float,
        max_pause_s: float = 5.0,
        max_drop_factor: int = 4,
        deadline: float = float("inf"),
    ):
        self.budget_s, self.max_pause_s = budget_s, max_pause_s
        self.deadline = deadline  # time.perf_counter() value; past it a cell keeps what it has
        self.max_drop_factor = max_drop_factor
        self.spent_s = 0.0

    def take(
        self, sample, repeats: int, max_drops: int | None = None
    ) -> tuple[list[Any], dict[str, Any]]:
        if max_drops is None:
            max_drops = self.max_drop_factor * repeats
        kept: list[Any] = []
        loads: list[float] = []
        dropped = n_noisy = 0
        while len(kept) < repeats:
            t0 = time.perf_counter()
            if kept and t0 > self.deadline:
                break
            with ForeignLoad() as fl:
                out = sample(len(kept))
            if (
                fl.noisy
                and self.spent_s < self.budget_s
                and dropped < max_drops
                and time.perf_counter() < self.deadline
            ):
                dropped += 1
                # don't retake at once: under contention a pass can take 100x longer
                wait_for_quiet(min(self.max_pause_s, self.budget_s - self.spent_s))
                self.spent_s += time.perf_counter() - t0
                continue
            kept.append(out)
            loads.append(fl.cores if fl.cores is not None else float("nan"))
            n_noisy += fl.noisy
        return kept, {
            "samples_kept": len(kept),
            "cut_short_by_deadline": len(kept) < repeats,
            "dropped_noisy_samples": dropped,
            "kept_sample_foreign_load_max": round(max(loads), 3) if loads else None,
            "kept_noisy_samples": n_noisy,
        }


# -- 1. training pass -----------------------------------------------------------------------------
def bench_train(
    kind: str,
    L: int,
    warmup: int,
    repeats: int,
    seed: int,
    screen: Screen,
    slow_budget_s: float = 0.0,
    max_repeats: int = 1,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    base = build("gru_baseline")
    m = build(kind)
    x = torch.randn(B_TRAIN, L, D_MODEL, requires_grad=True)
    for i in range(warmup):
        if i and time.perf_counter() > screen.deadline:
            break
        train_pass(base, x)
        train_pass(m, x)

    def sample(r: int) -> tuple[list[float], float]:
        if r % 2 == 0:  # alternate which goes first
            b = train_pass(base, x)
            return [b], train_pass(m, x)
        k = train_pass(m, x)
        return [train_pass(base, x)], k

    if kind in SLOW_KINDS:
        # The pure-torch reference may take seconds to minutes per pass, or (after an
        # optimisation) milliseconds: time one sample, then take as many as fit in
        # ``slow_budget_s`` (at least ``repeats``, at most ``max_repeats``); retake at most one.
        t0 = time.perf_counter()
        with ForeignLoad() as fl:
            first = sample(0)
        t_pair = time.perf_counter() - t0
        n = max(repeats, min(max_repeats, int(slow_budget_s / max(t_pair, 1e-9))))
        if n == 1:  # a single slow sample: bracket it with a second baseline sample
            first[0].append(train_pass(base, x))
            pairs = [first]
            info = {
                "samples_kept": 1,
                "cut_short_by_deadline": False,
                "dropped_noisy_samples": 0,
                "kept_sample_foreign_load_max": fl.cores,
                "kept_noisy_samples": int(fl.noisy),
            }
        else:
            rest, info = screen.take(lambda r: sample(r + 1), n - 1, max_drops=1)
            pairs = [first] + rest
            info["samples_kept"] += 1
            info["kept_noisy_samples"] += int(fl.noisy)
            info["cut_short_by_deadline"] = len(pairs) < n
        info["repeats_adapted"] = n
    else:
        pairs, info = screen.take(sample, repeats)
    tb = [t for bs, _ in pairs for t in bs]
    tk = [k for _, k in pairs]
    kb, kk = med(tb) * 1e3, med(tk) * 1e3
    return {
        "kind": kind,
        "B": B_TRAIN,
        "L": L,
        "D": D_MODEL,
        "warmup": warmup,
        "repeats": repeats,
        "ms": kk,
        "ms_min": min(tk) * 1e3,
        "gru_ms": kb,
        "gru_ms_min": min(tb) * 1e3,
        "speedup_vs_gru": kb / kk,
        "samples_ms": [round(t * 1e3, 3) for t in tk],
        "gru_samples_ms": [round(t * 1e3, 3) for t in tb],
        **info,
    }


# -- 2. step latency ------------------------------------------------------------------------------
def bench_step(
    kind: str, batch: int, warmup_steps: int, block: int, blocks: int, seed: int, screen: Screen
) -> dict[str, Any]:
    torch.manual_seed(seed)
    with torch.inference_mode():
        cell = nn.GRUCell(D_MODEL, D_MODEL)
        m = build(kind)
        m.eval()
        xs = [torch.randn(batch, D_MODEL) for _ in range(64)]
        h = torch.zeros(batch, D_MODEL)
        st = m.initial_state(batch)
        clock = time.perf_counter_ns

        def run_cell(n: int) -> list[int]:
            nonlocal h
            out = []
            for i in range(n):
                x = xs[i & 63]
                t0 = clock()
                h = cell(x, h)
                out.append(clock() - t0)
            return out

        def run_kind(n: int) -> list[int]:
            nonlocal st
            out = []
            for i in range(n):
                x = xs[i & 63]
                t0 = clock()
                _, st = m.step(x, st)
                out.append(clock() - t0)
            return out

        def sample(b: int) -> tuple[list[int], list[int]]:
            if b % 2 == 0:
                c = run_cell(block)
                return c, run_kind(block)
            k = run_kind(block)
            return run_cell(block), k

        run_cell(warmup_steps)
        run_kind(warmup_steps)
        pairs, info = screen.take(sample, blocks)
    tc = [t for c, _ in pairs for t in c]
    tk = [t for _, k in pairs for t in k]
    uc, uk = med(tc) / 1e3, med(tk) / 1e3
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] / 1e3  # noqa: E731
    return {
        "kind": kind,
        "B": batch,
        "D": D_MODEL,
        "steps": len(tk),
        "warmup_steps": warmup_steps,
        "us": uk,
        "us_p10": q(tk, 0.1),
        "us_p90": q(tk, 0.9),
        "us_mean": statistics.fmean(tk) / 1e3,
        "grucell_us": uc,
        "grucell_us_p10": q(tc, 0.1),
        "grucell_us_p90": q(tc, 0.9),
        "ratio_vs_grucell": uk / uc,
        **info,
    }


# -- 3. memory (fresh subprocess per measurement) -------------------------------------------------
def _proc_status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    out = {}
    for k in ("VmRSS", "VmHWM"):
        m = re.search(rf"{k}:\s+(\d+) kB", text)
        if m:
            out[k] = int(m.group(1))
    return out


def _mem_child(cfg_json: str) -> None:
    """Runs in the subprocess: one training pass, prints a JSON line with its peak RSS."""
    cfg = json.loads(cfg_json)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    m = build(cfg["kind"])
    if cfg["kind"] != "gru_baseline":
        from ssm import backend as sb

        sb.cpu_ext()  # load (or build) the fused kernel before the baseline reading
    xw = torch.randn(cfg["B"], 8, D_MODEL, requires_grad=True)
    train_pass(m, xw)
    m.zero_grad(set_to_none=True)
    del xw
    x = torch.randn(cfg["B"], cfg["L"], D_MODEL, requires_grad=True)
    gc.collect()
    before = _proc_status()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = _proc_status().get("VmHWM", 1 << 62) <= before["VmRSS"] + 1024
    except OSError:
        hwm_reset = False
    dt = train_pass(m, x)
    after = _proc_status()
    peak_kb = after["VmHWM"] if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        "MEMJSON "
        + json.dumps(
            {
                "rss_before_mib": before["VmRSS"] / 1024,
                "peak_rss_mib": peak_kb / 1024,
                "peak_delta_mib": (peak_kb - before["VmRSS"]) / 1024,
                "rss_after_mib": after["VmRSS"] / 1024,
                "hwm_reset": hwm_reset,
                "pass_s": dt,
                "num_threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def bench_memory(
    kind: str, L: int, seed: int, threads: int | None, timeout: float
) -> dict[str, Any]:
    cfg = {"kind": kind, "L": L, "B": B_TRAIN, "seed": seed, "threads": threads}
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_ssm; "
        "bench_ssm._mem_child(sys.argv[2])"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(HERE), json.dumps(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("MEMJSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"memory child exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return {"kind": kind, "B": B_TRAIN, "L": L, "D": D_MODEL, **json.loads(line[len("MEMJSON ") :])}


# -- targets --------------------------------------------------------------------------------------
def settings_for(args: argparse.Namespace, kinds: list[str]) -> dict[str, Any]:
    if args.quick:
        s = {
            "train_lengths": [256, 1024],
            "train_warmup": 1,
            "train_repeats": 3,
            "torch_ref_lengths": [256],
            "torch_ref_warmup": {"256": 0},
            "torch_ref_repeats": {"256": 1},
            "torch_ref_cell_budget_s": 3.0,
            "step_warmup": 50,
            "step_block": 100,
            "step_blocks": 4,
            "memory_lengths": [1024],
            "memory_torch_ref_lengths": [],
            "memory_slow_max_s": 10.0,
        }
    else:
        s = {
            "train_lengths": [256, 1024],
            "train_warmup": 2,
            "train_repeats": 15,
            # the reference loop's backward grows super-linearly with L (minutes at L=1024):
            # L=256 gets 1 warm-up + 3 repeats; L=1024 one timed pass, no warm-up (same code
            # paths were warmed at L=256), bracketed by two GRU samples.
            "torch_ref_lengths": [256, 1024],
            "torch_ref_warmup": {"256": 1, "1024": 0},
            "torch_ref_repeats": {"256": 3, "1024": 1},
            # ...but more if they fit in this many seconds per cell (up to train_repeats)
            "torch_ref_cell_budget_s": 20.0,
            "step_warmup": 200,
            "step_block": 500,
            "step_blocks": 8,
            "memory_lengths": [256, 1024],
            "memory_torch_ref_lengths": [256, 1024],
            # the reference's memory cell is skipped where its timed pass took longer than this
            "memory_slow_max_s": 30.0,
        }
    if args.repeats is not None:
        s["train_repeats"] = args.repeats
    s.update(
        {
            "kinds": kinds,
            "B_train": B_TRAIN,
            "d_model": D_MODEL,
            "step_batches": list(STEP_BATCHES),
            "mamba": {"d_state": 16, "expand": 2},
            "mamba2": dict(MAMBA2),
            "seed": args.seed,
            "quick": args.quick,
            "dtype": "float32",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "threads_requested": args.threads,
            "noisy_threshold_cores": NOISY_CORES,
            "retry_budget_s": args.retry_budget,
            "wait_idle_s": args.wait_idle,
            "wait_idle_total_s": args.wait_idle_total,
            "deadline_s": args.deadline or None,
        }
    )
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="few repeats, for smoke tests (< 1 min)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per training-pass cell (default 15; 3 with --quick); "
        "the torch-reference Mamba takes as many (up to this) as fit in "
        "settings.torch_ref_cell_budget_s",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"JSON path (default {DEFAULT_OUT.relative_to(REPO)}); markdown goes "
        "next to it with suffix .md",
    )
    ap.add_argument(
        "--kinds",
        default=",".join(ALL_KINDS),
        help=f"comma-separated subset of {','.join(ALL_KINDS)}",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="S",
        help="before each cell, wait up to S seconds for other processes to go quiet "
        "(< 0.25 cores); default 15, 0 with --quick",
    )
    ap.add_argument(
        "--retry-budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds the run may spend retaking timing samples during which other "
        "processes used > 0.25 cores (default 120, 20 with --quick)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's default, all cores)",
    )
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="S",
        help="soft limit on the run's wall time after setup (default 450, 90 with "
        "--quick; 0: none): past it, cells keep the samples they have and "
        "cells not yet started are skipped (recorded as skipped). Under CPU "
        "contention from "
        "other processes a 2-thread GRU pass can be 100x slower than when quiet",
    )
    ap.add_argument(
        "--wait-idle-total",
        type=float,
        default=90.0,
        metavar="S",
        help="cap on the total time spent waiting (default 90)",
    )
    args = ap.parse_args(argv)

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        ap.error(f"unknown kind(s) {bad}; choose from {','.join(ALL_KINDS)}")
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.deadline is None:
        args.deadline = 90.0 if args.quick else 450.0
    if args.retry_budget is None:
        args.retry_budget = 20.0 if args.quick else 120.0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 15.0
    out: Path = args.out if args.out.is_absolute() else Path.cwd() / args.out
    md_path = out.with_suffix(".md")

    import logging

    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    S = settings_for(args, kinds)
    res: dict[str, Any] = {
        "schema": "bench_ssm/1",
        "complete": False,
        "command": shlex.join(["python"] + sys.argv) if argv is None else shlex.join(argv),
        "argv": sys.argv if argv is None else argv,
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "git": git_info(),
        "machine": machine_info(),
        "settings": S,
        "methods": {"train": TRAIN_METHOD, "step": STEP_METHOD},
        "train": [],
        "step": [],
        "memory": {"method": MEMORY_METHOD, "rows": []},
        "reference_points": {
            "note": REFERENCE_NOTE,
            "config": {"B": 16, "d_model": 64, "d_state": 16, "expand": 2, "L": 1024},
            "points": REFERENCE_POINTS,
        },
        "targets": [],
        "errors": [],
        "warnings": [],
    }
    if res["git"]["ssm_changed_files"]:
        log(f"note: ssm/ has uncommitted changes: {res['git']['ssm_changed_files']}")

    run_load = ForeignLoad().__enter__()

    def save() -> None:
        run_load.__exit__()
        res["foreign_load_cores"] = None if run_load.cores is None else round(run_load.cores, 3)
        res["targets"] = eval_targets(res)
        res["wall_s"] = time.perf_counter() - t_start
        res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        write_text_atomic(out, json.dumps(res, indent=1, sort_keys=False) + "\n")

    waited = [0.0]
    mem_cells = (
        []
        if args.skip_memory
        else [
            (k, L)
            for L in S["memory_lengths"]
            for k in ("gru_baseline",) + tuple(kinds)
            if not (k == "mamba_torch" and L not in S["memory_torch_ref_lengths"])
        ]
    )
    # the deadline clock starts after setup (the fused kernel may have been compiled just now)
    res["setup_s"] = round(time.perf_counter() - t_start, 2)
    hard_deadline = time.perf_counter() + args.deadline if args.deadline else float("inf")
    # leave time for the memory subprocesses (~2 s each when quiet; the reference Mamba ~10 s)
    reserve = sum(12.0 if k in SLOW_KINDS else 3.0 for k, _ in mem_cells)
    screen = Screen(args.retry_budget, deadline=hard_deadline - reserve)

    def skip(section: list, label: str, why: str, **meta) -> None:
        section.append({**meta, "skipped": why})
        res["warnings"].append(f"{label}: skipped ({why})")
        log(f"{label}: skipped ({why})")
        save()

    def attempt(
        section: list, fn, *a, label: str, quiet: bool = True, deadline: float | None = None, **meta
    ) -> None:
        if time.perf_counter() > (screen.deadline if deadline is None else deadline):
            return skip(section, label, f"past the --deadline of {args.deadline:g} s", **meta)
        wait = 0.0
        if quiet and args.wait_idle > 0 and waited[0] < args.wait_idle_total:
            wait = wait_for_quiet(min(args.wait_idle, args.wait_idle_total - waited[0]))
            waited[0] += wait
        t0 = time.perf_counter()
        try:
            with ForeignLoad() as fl:
                r = fn(*a)
        except Exception as e:  # a kind that breaks mid-edit must not sink the whole run
            r = {**meta, **error_record(e)}
            res["errors"].append(f"{label}: {r['error']}")
            log(f"{label}: ERROR {r['error']}")
        else:
            r["foreign_load_cores"] = None if fl.cores is None else round(fl.cores, 3)
            r["waited_for_quiet_s"] = round(wait, 2)
            # timing cells: noisy if a kept sample was; RSS does not depend on load
            r["noisy"] = r.get("kept_noisy_samples", 0) > 0
            extra = {
                k: r[k]
                for k in (
                    "speedup_vs_gru",
                    "ratio_vs_grucell",
                    "peak_delta_mib",
                    "foreign_load_cores",
                )
                if r.get(k) is not None
            }
            log(
                f"{label}: {', '.join(f'{k}={v:.3g}' for k, v in extra.items())} "
                f"({time.perf_counter() - t0:.1f}s{f', waited {wait:.0f}s' if wait >= 1 else ''})"
            )
        section.append(r)
        save()

    # 1. training pass
    for L in S["train_lengths"]:
        for k in kinds:
            if k == "mamba_torch":
                if L not in S["torch_ref_lengths"]:
                    continue
                w, n = S["torch_ref_warmup"][str(L)], S["torch_ref_repeats"][str(L)]
                # its backward grows about quadratically in L; don't start what can't finish
                prev = [r for r in res["train"] if r["kind"] == k and "ms" in r]
                if prev:
                    est = (w + n) * prev[-1]["ms"] / 1e3 * (L / prev[-1]["L"]) ** 2
                    left = screen.deadline - time.perf_counter()
                    if est > left:
                        skip(
                            res["train"],
                            f"train {k} L={L}",
                            f"estimated {est:.0f} s, "
                            f"{max(left, 0):.0f} s left before the --deadline",
                            kind=k,
                            L=L,
                        )
                        continue
            else:
                w, n = S["train_warmup"], S["train_repeats"]
            attempt(
                res["train"],
                bench_train,
                k,
                L,
                w,
                n,
                args.seed,
                screen,
                S["torch_ref_cell_budget_s"],
                max(n, S["train_repeats"]),
                label=f"train {k} L={L}",
                kind=k,
                L=L,
            )
            gc.collect()

    # the same nn.GRU config can settle at different speeds in different cells (seen: ~150 vs
    # ~180 ms at L=1024, stable within a cell), so also report speedups against the pooled median
    pooled: dict[str, float] = {}
    for L in S["train_lengths"]:
        allb = [
            t
            for r in res["train"]
            if r.get("L") == L and "gru_samples_ms" in r
            for t in r["gru_samples_ms"]
        ]
        if allb:
            pooled[str(L)] = med(allb)
            for r in res["train"]:
                if r.get("L") == L and "ms" in r:
                    r["speedup_vs_gru_pooled"] = pooled[str(L)] / r["ms"]
    res["train_gru_pooled_ms"] = pooled
    # the chunked scan against the per-step reference loop (both Mamba, backend "chunked" vs
    # "torch"), per L: the ratio of medians, and of their speedups vs their interleaved GRU
    res["chunked_vs_reference"] = {}
    for L in S["train_lengths"]:
        ref, chk = find(res["train"], kind="mamba_torch", L=L), find(
            res["train"], kind="mamba_chunked", L=L
        )
        if ref and chk:
            res["chunked_vs_reference"][str(L)] = {
                "speedup": ref["ms"] / chk["ms"],
                "speedup_via_gru": chk["speedup_vs_gru"] / ref["speedup_vs_gru"],
            }
    save()

    # 2. step latency (skip the reference and chunked Mamba: their step is auto's unfused path)
    for b in S["step_batches"]:
        for k in kinds:
            if k in ("mamba_torch", "mamba_chunked"):
                continue
            attempt(
                res["step"],
                bench_step,
                k,
                b,
                S["step_warmup"],
                S["step_block"],
                S["step_blocks"],
                args.seed,
                screen,
                label=f"step {k} B={b}",
                kind=k,
                B=b,
            )

    # 3. memory, fresh subprocess each
    for k, L in mem_cells:
        if k in SLOW_KINDS:
            t = find(res["train"], kind=k, L=L)
            if t is None or t["ms"] / 1e3 > S["memory_slow_max_s"]:
                why = (
                    "its training pass was not timed"
                    if t is None
                    else f"its training pass took {t['ms'] / 1e3:.0f} s "
                    f"> memory_slow_max_s={S['memory_slow_max_s']:g}"
                )
                skip(res["memory"]["rows"], f"memory {k} L={L}", why, kind=k, L=L)
                continue
        attempt(
            res["memory"]["rows"],
            bench_memory,
            k,
            L,
            args.seed,
            args.threads,
            900.0,
            label=f"memory {k} L={L}",
            quiet=False,
            deadline=hard_deadline,
            kind=k,
            L=L,
        )

    res["retry_spent_s"] = round(screen.spent_s, 1)
    res["waited_for_quiet_s"] = round(waited[0], 1)
    res["complete"] = True
    res["git_end"] = git_info()  # ssm/ may have changed during the run
    if (
        res["git_end"]["diff_sha1"] != res["git"]["diff_sha1"]
        or res["git_end"]["commit"] != res["git"]["commit"]
    ):
        res["warnings"].append(
            "the working tree changed during the run (see git vs git_end); "
            "timed modules were imported at start, memory subprocesses "
            "import afresh"
        )
    noisy = [
        f"{sec} {r['kind']} " + (f"L={r['L']}" if "L" in r else f"B={r['B']}")
        for sec, rows in (
            ("train", res["train"]),
            ("step", res["step"]),
            ("memory", res["memory"]["rows"]),
        )
        for r in rows
        if r.get("noisy")
    ]
    short = [
        f"{sec} {r['kind']} " + (f"L={r['L']}" if "L" in r else f"B={r['B']}")
        for sec, rows in (("train", res["train"]), ("step", res["step"]))
        for r in rows
        if r.get("cut_short_by_deadline")
    ]
    if short:
        res["warnings"].append(
            "cut short by the --deadline (fewer samples than asked): " + ", ".join(short)
        )
    if noisy:
        res["warnings"].append(
            f"other processes used > {NOISY_CORES} cores during: "
            + ", ".join(noisy)
            + " (marked * in the tables)"
        )
    save()
    md = to_markdown(res)
    write_text_atomic(md_path, md)
    print(md)
    log(f"wrote {out} and {md_path} in {res['wall_s']:.0f}s")
    return 2 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
