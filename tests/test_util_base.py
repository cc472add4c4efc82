"""The shared base in ``ssm.util``: atomic writes, Student-t intervals, seed derivation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ssm.util import (
    derive_seed,
    mean_ci,
    student_t_cdf,
    student_t_quantile,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from ssm.util import files as files_mod

REPO = Path(__file__).resolve().parent.parent

# -- atomic writes --------------------------------------------------------------------------------


def test_write_atomic_replaces_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a.bin"
    assert write_atomic(path, b"old") == path
    write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_atomic_creates_parents_and_uses_umask_permissions(tmp_path):
    path = tmp_path / "x" / "y" / "z.txt"
    write_text_atomic(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_atomic_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(files_mod.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    write_atomic(tmp_path / "f", b"x")
    assert len(synced) == 2  # the temp file, then the directory (on POSIX)


def test_write_atomic_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "keep.json"
    write_json_atomic(path, {"v": 1})

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(files_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_write_json_atomic_writes_indented_json_with_newline(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"a": [1, 2]})
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == {"a": [1, 2]}


# -- Student-t intervals --------------------------------------------------------------------------

LEVELS = (0.6, 0.75, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9995, 0.05, 0.025)


@pytest.mark.parametrize("df", range(1, 201))
def test_student_t_quantile_matches_scipy(df):
    for p in LEVELS:
        ours, ref = student_t_quantile(p, df), float(stats.t.ppf(p, df))
        assert ours == pytest.approx(ref, rel=1e-6), (p, df)


@pytest.mark.parametrize("df", [0.5, 2.5, 37.3, 1e3, 1e6])
def test_student_t_quantile_matches_scipy_for_real_df(df):
    for p in LEVELS:
        assert student_t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-6)


def test_student_t_quantile_is_exact_near_the_centre():
    # p = 1/2 + eps: the quantile is eps / pdf(0); df = 4 has pdf(0) = 3/8 exactly
    assert student_t_quantile(0.5 + 1e-7, 4) == pytest.approx(1e-7 / 0.375, rel=1e-6)
    assert student_t_quantile(0.5, 3) == 0.0


def test_student_t_cdf_matches_scipy():
    for df in (1, 2, 5, 30, 200):
        for t in (-40.0, -2.0, -0.3, 0.0, 0.1, 1.0, 2.5, 100.0):
            assert student_t_cdf(t, df) == pytest.approx(float(stats.t.cdf(t, df)), abs=1e-13)


@pytest.mark.parametrize("bad", [(0.0, 3), (1.0, 3), (0.9, 0), (0.9, -1.0)])
def test_student_t_quantile_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        student_t_quantile(*bad)


def test_mean_ci_is_the_student_t_interval_over_values():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 30):
        x = rng.normal(size=n)
        d = mean_ci(x)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert d["mean"] == pytest.approx(x.mean())
        assert d["ci95"] == pytest.approx((hi - lo) / 2, rel=1e-9)
        assert d["n"] == n and d["statistic"] == "student-t"


def test_mean_ci_is_wider_than_the_normal_approximation_for_few_seeds():
    x = [1.0, 2.0, 4.0]
    normal = 1.96 * np.std(x, ddof=1) / math.sqrt(3)
    assert mean_ci(x)["ci95"] == pytest.approx(4.302652729911275 / 1.96 * normal)


def test_mean_ci_drops_missing_values_and_names_the_level():
    d = mean_ci([1.0, None, float("nan"), 3.0, float("inf")], level=0.9)
    assert d["n"] == 2 and d["mean"] == 2.0 and "ci95" not in d
    assert d["ci90"] == pytest.approx(stats.t.ppf(0.95, 1) * math.sqrt(2) / math.sqrt(2))
    grid = np.arange(6.0).reshape(2, 3)  # (seeds, tasks): every pair counts
    assert mean_ci(grid) == mean_ci(grid.ravel().tolist()) and mean_ci(grid)["n"] == 6
    one, none = mean_ci([5.0]), mean_ci([])
    assert one["mean"] == 5.0 and math.isnan(one["ci95"]) and one["n"] == 1
    assert math.isnan(none["mean"]) and none["n"] == 0
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], level=1.0)


# -- seed derivation ------------------------------------------------------------------------------


def test_derive_seed_is_deterministic_across_processes():
    code = "from ssm.util import derive_seed; print(derive_seed(7, 3, 'replay'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert int(out.stdout) == derive_seed(7, 3, "replay")
    assert derive_seed(7, 3, "replay") == derive_seed(np.int64(7), np.int32(3), "replay")


def test_derive_seed_distinct_keys_give_distinct_seeds():
    seeds = {derive_seed(s, i) for s in range(20) for i in range(500)}
    seeds |= {derive_seed(s) for s in range(20)}
    seeds |= {derive_seed(0, "a"), derive_seed(0, "b"), derive_seed(0, "97"), derive_seed(0, 1, 2)}
    seeds |= {derive_seed(0, 2, 1)}
    assert len(seeds) == 20 * 500 + 20 + 5
    # the hand-written formula collides: seed 0, iteration 1_000_003 == seed 1, iteration 0
    assert derive_seed(0, 1_000_003) != derive_seed(1, 0)


def test_derive_seed_range_follows_bits():
    assert all(0 <= derive_seed(s, 1) < 2**63 for s in range(100))
    assert all(0 <= derive_seed(s, 1, bits=31) < 2**31 for s in range(100))
    assert max(derive_seed(s, bits=31) for s in range(200)) > 2**30  # uses the whole range
    assert derive_seed(3, 5, bits=31) == derive_seed(3, 5, bits=64) >> 33


@pytest.mark.parametrize(
    "seed, keys, bits",
    [(-1, (), 63), (1.5, (), 63), ("1", (), 63), (True, (), 63), (0, (-1,), 63), (0, (2**64,), 63)]
    + [(0, (1.0,), 63), (0, (None,), 63), (0, (), 0), (0, (), 65)],
)
def test_derive_seed_rejects_bad_input(seed, keys, bits):
    with pytest.raises(ValueError):
        derive_seed(seed, *keys, bits=bits)


def test_util_imports_only_the_standard_library_and_numpy():
    # load ssm.util under a bare ``ssm`` package, skipping ssm/__init__ (which imports torch)
    script = (
        "import sys, types\n"
        f"pkg = types.ModuleType('ssm'); pkg.__path__ = [{str(REPO / 'ssm')!r}]\n"
        "sys.modules['ssm'] = pkg\n"
        "before = set(sys.modules)\n"
        "import ssm.util\n"
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "numpy" in loaded and not {"torch", "scipy"} & loaded
    other = loaded - {"ssm", "numpy"}
    assert all(m in sys.stdlib_module_names or m.startswith("_") for m in other), other
