"""The machine under a benchmark: its commit, CPU, memory and threads (:func:`git_info`,
:func:`machine_info`), and the load other processes put on it while a cell is timed
(:class:`ForeignLoad`, :func:`wait_for_quiet`), so noisy cells can be flagged."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_ssm_settings import NOISY_CORES

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except Exception:
        return None


def git_info() -> dict[str, Any]:
    head = _run(["git", "rev-parse", "HEAD"])
    porcelain = _run(["git", "status", "--porcelain", "--untracked-files=all"])
    diff = _run(["git", "diff", "HEAD"])
    # the results folder is this script's own output: it does not make the tree dirty
    changed = [
        ln[3:]
        for ln in (porcelain or "").splitlines()
        if ln.strip() and not ln[3:].startswith("experiments/results/")
    ]
    return {
        "commit": head.strip() if head else None,
        "dirty": bool(changed) if porcelain is not None else None,
        "changed_files": changed,
        # identifies the uncommitted state of tracked files (ssm/ may be edited concurrently)
        "diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
        "ssm_changed_files": [f for f in changed if f.startswith("ssm/")],
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def mem_total_gib() -> float | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return round(int(m.group(1)) / 2**20, 2) if m else None
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem_total_gib(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "env": {
            k: os.environ.get(k)
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SSM_DISABLE_CPU_KERNELS")
            if k in os.environ
        },
    }
    try:
        import ssm
        from ssm import backend as sb

        t0 = time.perf_counter()
        ext = sb.cpu_ext()
        info["ssm_cpu_ext"] = getattr(ext, "__name__", None) if ext is not None else None
        info["ssm_cpu_ext_load_s"] = round(time.perf_counter() - t0, 3)
        info["ssm_file"] = str(Path(ssm.__file__).resolve())
    except Exception as e:  # the benchmark still runs; the error is on record
        info["ssm_cpu_ext_error"] = f"{type(e).__name__}: {e}"
    return info


class ForeignLoad:
    """CPU time used by *other* processes while a block runs, in cores (0 = machine was ours).

    System-wide busy time from /proc/stat (user+nice+system+irq+softirq+steal) minus this
    process's and its waited-for children's CPU time (os.times), divided by wall time.
    """

    HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _busy() -> float | None:
        try:
            v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / ForeignLoad.HZ

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> ForeignLoad:
        self.t0, self.b0, self.o0 = time.perf_counter(), self._busy(), self._own()
        self.cores: float | None = None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        b1 = self._busy()
        self.foreign_s: float | None = None
        if self.b0 is not None and b1 is not None and self.wall > 0:
            self.foreign_s = max(0.0, b1 - self.b0 - (self._own() - self.o0))
            self.cores = self.foreign_s / self.wall

    @property
    def noisy(self) -> bool:
        """Others used > NOISY_CORES; the counters tick in 1/HZ s per CPU, so a short window
        also needs more than 3 ticks of foreign time before it counts as noisy."""
        if self.cores is None or self.foreign_s is None:
            return False
        return self.cores > NOISY_CORES and self.foreign_s > 3.0 / self.HZ


def wait_for_quiet(max_wait_s: float, window_s: float = 0.5) -> float:
    """Sleep in short windows until other processes use < NOISY_CORES; returns the wait."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        with ForeignLoad() as fl:
            time.sleep(window_s)
        if not fl.noisy:
            break
    return time.perf_counter() - t0
