"""One directory per training run: config snapshot, metadata, metrics log, checkpoints, plots.

Layout of ``root/<name or timestamp>-<short id>/``::

    config.yaml        the config the run started with
    meta.json          git commit + dirty flag, seed, command line, versions, host, start time
    metrics.jsonl      one JSON object per ``log_metrics`` call: {"step": ..., <scalars>}
    checkpoints/       step_<step:09d>.pt (the last ``keep``) and ``latest`` (name of the newest)
    plots/             PNGs from ``plot_metrics``

Every file that is replaced (config, meta, checkpoints, ``latest``) is written to a temp file in
the same directory, fsynced and renamed into place, so a run killed at any moment leaves either
the old or the new version. Checkpoints are read with ``torch.load(weights_only=True)``: loading
one never runs code from the file, so their content is restricted to tensors, containers and plain
Python scalars (``capture_rng_state`` stores RNG states in that form).
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ssm.util import fsync_dir, write_atomic

from .config import dump_config, load_config

__all__ = [
    "CheckpointError",
    "RunDir",
    "RunDirError",
    "capture_rng_state",
    "restore_rng_state",
]

CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
PLOT_DIR = "plots"
LATEST_FILE = "latest"
_CHECKPOINT_RE = re.compile(r"^step_(\d{9,})\.pt$")

# What a weights_only torch.load accepts, and so what a checkpoint may hold.
_LEAF_TYPES = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


class RunDirError(ValueError):
    """A path that is not a (complete) run directory."""


RUN_KINDS = {
    "train": "`metarl train`",
    "sequence": "`metarl sequence`",
    "population": "`metarl population`",
}
_KIND_COMMANDS = {
    "train": "metarl resume / eval / adapt-eval / export-skills",
    "sequence": "metarl sequence --resume; its per-stage evaluation (R, R_pre, R_adapt) is in "
    "results.json; metarl export-skills",
    "population": "metarl population --resume; metarl export-skills",
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or not weights-only."""


class RunDir:
    """A run directory; make one with ``RunDir.create`` or reopen one with ``RunDir.open``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.meta_path = self.path / META_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.checkpoint_dir = self.path / CHECKPOINT_DIR
        self.plot_dir = self.path / PLOT_DIR
        self._metrics_tail_checked = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- creating and opening -----------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, name: str | None, config: Any, seed: int) -> RunDir:
        """Make ``root/<name or timestamp>-<short id>`` with the config snapshot and metadata.

        ``config`` is a config dataclass instance or a dict (``None`` for none).
        """
        root = Path(root)
        if name is not None and (not name or "/" in name or os.sep in name or name in (".", "..")):
            raise RunDirError(f"run name {name!r} must be a non-empty single path component")
        start = datetime.now(timezone.utc)
        base = name if name is not None else start.strftime("%Y%m%d-%H%M%S")
        root.mkdir(parents=True, exist_ok=True)
        while True:  # a clash of 8 random hex digits is unlikely, but cheap to rule out
            path = root / f"{base}-{uuid.uuid4().hex[:8]}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = cls(path)
        run.checkpoint_dir.mkdir()
        run.plot_dir.mkdir()
        dump_config({} if config is None else config, run.config_path)
        meta = {
            "run_id": path.name,
            "seed": int(seed),
            "command": [sys.executable, *sys.argv],
            "cwd": os.getcwd(),
            **_git_info(Path(__file__).resolve().parent),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "hostname": socket.gethostname(),
            "start_time": start.isoformat(),
        }
        write_atomic(run.meta_path, (json.dumps(meta, indent=2) + "\n").encode())
        run.metrics_path.touch()
        fsync_dir(path)
        return run

    @classmethod
    def open(cls, path: str | Path, expect: str | None = None) -> RunDir:
        """Reopen an existing run directory (to resume or evaluate). With ``expect`` (one of
        ``RUN_KINDS``), a run of another kind is refused with the commands that do take it."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise RunDirError(f"not a run directory: {run.path} does not exist or is not a folder")
        required = [run.config_path, run.meta_path, run.metrics_path, run.checkpoint_dir]
        missing = [p.name for p in required if not p.exists()]
        if missing:
            raise RunDirError(f"not a run directory: {run.path} lacks {', '.join(missing)}")
        if expect is not None:
            kind = run.kind
            if kind != expect:
                raise RunDirError(
                    f"{run.path} is a {RUN_KINDS.get(kind, 'an unknown kind of')} run; this "
                    f"command takes a {RUN_KINDS[expect]} run (a {kind} run works with: "
                    f"{_KIND_COMMANDS.get(kind, 'no metarl command')})"
                )
        run.plot_dir.mkdir(exist_ok=True)
        return run

    @property
    def kind(self) -> str:
        """``train``, ``sequence``, ``population`` or ``unknown``, told by the config snapshot's
        top-level keys (each command writes its own config class)."""
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return "unknown"
        if not isinstance(data, dict):
            return "unknown"
        if "curriculum" in data:
            return "sequence"
        if "agents" in data or "share_params" in data:
            return "population"
        if "algo" in data:
            return "train"
        return "unknown"

    @property
    def meta(self) -> dict:
        """The contents of ``meta.json``."""
        return json.loads(self.meta_path.read_text())

    def load_config(self, cls: type, overrides: Iterable[str] = ()) -> Any:
        """The run's config snapshot as an instance of the dataclass ``cls``."""
        return load_config(cls, self.config_path, list(overrides))

    # --- metrics ------------------------------------------------------------------------------

    def log_metrics(self, step: int, **scalars: float | int | str | bool | None) -> None:
        """Append ``{"step": step, **scalars}`` as one line of ``metrics.jsonl`` (fsynced)."""
        record: dict[str, Any] = {"step": int(step)}
        for key, value in scalars.items():
            record[key] = _json_scalar(key, value)
        line = json.dumps(record) + "\n"
        if not self._metrics_tail_checked:
            self._drop_partial_metrics_line()
            self._metrics_tail_checked = True
        with open(self.metrics_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        """All records of ``metrics.jsonl``; a truncated last line (a killed run) is ignored."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().split("\n")
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) - 1:  # the last line has no newline: cut off mid-write
                    break
                raise RunDirError(f"{self.metrics_path}, line {i + 1}: not valid JSON ({e})") from e
        return records

    def rewind_metrics(self, step: int) -> int:
        """Drop the records logged after ``step`` (rows a killed run wrote after its last
        checkpoint), rewriting ``metrics.jsonl`` atomically; returns how many were dropped."""
        records = self.read_metrics()
        kept = [r for r in records if r["step"] <= step]
        body = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(self.metrics_path, body.encode())
        self._metrics_tail_checked = True
        return len(records) - len(kept)

    def _drop_partial_metrics_line(self) -> None:
        """Cut a line left unfinished by a killed run, so the next record starts on its own line."""
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def plot_metrics(self, keys: Iterable[str], filename: str = "metrics.png") -> Path:
        """A PNG in ``plots/`` with one panel per metric key, plotted against step."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ImportError("plot_metrics needs matplotlib: pip install matplotlib") from e
        keys = list(keys)
        records = self.read_metrics()
        available = sorted({k for r in records for k in r} - {"step"})
        missing = [k for k in keys if k not in available]
        if not keys or missing:
            raise KeyError(
                f"cannot plot {missing or 'no keys'}: metrics logged in {self.metrics_path} "
                f"are {available}"
            )
        fig = Figure(figsize=(6, 2.5 * len(keys)))
        FigureCanvasAgg(fig)
        for i, key in enumerate(keys):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            ax = fig.add_subplot(len(keys), 1, i + 1)
            ax.plot([p[0] for p in points], [p[1] for p in points])
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        ax.set_xlabel("step")
        fig.tight_layout()
        out = self.plot_dir / filename
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return write_atomic(out, buf.getvalue())

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, oldest step first."""
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def save_checkpoint(self, step: int, state: Mapping, keep: int = 3) -> Path:
        """Atomically write ``state`` to ``checkpoints/step_<step>.pt``, point ``latest`` at it
        and delete all but the newest ``keep`` checkpoints.

        ``state`` may hold tensors, (nested) dicts/lists/tuples of them and plain Python scalars
        and strings: what ``torch.load(weights_only=True)`` can read back.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not isinstance(state, Mapping):
            raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
        _check_weights_only(state, "state")
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        path = write_atomic(self.checkpoint_dir / f"step_{step:09d}.pt", buf.getvalue())
        write_atomic(self.checkpoint_dir / LATEST_FILE, (path.name + "\n").encode())
        for old in self.checkpoints()[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def load_checkpoint(
        self, path_or_latest: str | Path = "latest", map_location: Any = "cpu"
    ) -> dict:
        """The state dict of a checkpoint, loaded with ``weights_only=True``.

        ``"latest"`` reads the checkpoint ``latest`` names and, if that one is unreadable, falls
        back (with a warning) to the newest readable one. A path may be absolute or relative to
        ``checkpoints/``.
        """
        if str(path_or_latest) != LATEST_FILE:
            path = Path(path_or_latest)
            if not path.is_absolute() and not path.exists():
                path = self.checkpoint_dir / path
            return _load_checkpoint_file(path, map_location)

        candidates = list(reversed(self.checkpoints()))
        latest_file = self.checkpoint_dir / LATEST_FILE
        if latest_file.exists():
            named = self.checkpoint_dir / latest_file.read_text().strip()
            candidates = [named] + [c for c in candidates if c != named]
        if not candidates:
            raise CheckpointError(f"no checkpoints in {self.checkpoint_dir}")
        failures = []
        for path in candidates:
            try:
                state = _load_checkpoint_file(path, map_location)
            except CheckpointError as e:
                failures.append(str(e))
                continue
            if failures:
                warnings.warn(
                    f"skipped unreadable checkpoints, loaded {path}: " + "; ".join(failures),
                    stacklevel=2,
                )
            return state
        raise CheckpointError(
            f"no readable checkpoint in {self.checkpoint_dir}:\n  " + "\n  ".join(failures)
        )


# --- RNG state --------------------------------------------------------------------------------


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """The states of Python's ``random``, NumPy's global RNG, torch's CPU RNG (and the CUDA RNGs
    where CUDA is available) and of the named ``generators``, as tensors and plain scalars."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002 (the global RNG is the point)
    bit_generator, keys, pos, has_gauss, cached_gaussian = np_state
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32, widened for torch
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(
    state: Mapping, generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put back the RNG states from ``capture_rng_state`` (the same ``generators`` names)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global RNG is the point)
        (
            npy["bit_generator"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    saved = state.get("generators", {})
    generators = generators or {}
    missing = sorted(set(generators) - set(saved))
    if missing:
        raise KeyError(f"no saved state for generators {missing}; saved: {sorted(saved)}")
    for name, g in generators.items():
        g.set_state(saved[name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- helpers ----------------------------------------------------------------------------------


def _load_checkpoint_file(path: Path, map_location: Any) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, a non-allowlisted global, ...
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours its messages
        if "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = found.group(1) if found else "a pickled python object"
            reason = f"refused by torch.load(weights_only=True): the file holds {what}"
        else:
            reason = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def _check_weights_only(value: Any, where: str) -> None:
    """Raise early for anything a weights_only load would refuse, naming where it sits."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; use str or int")
            _check_weights_only(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_weights_only(v, f"{where}[{i}]")
    elif not isinstance(value, _LEAF_TYPES):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoints hold only tensors, dicts, "
            "lists, tuples and python scalars/strings (they are loaded with weights_only=True)"
        )


def _json_scalar(key: str, value: Any) -> float | int | str | bool | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray | np.generic) and value.size == 1:
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value  # NaN/inf are written as NaN/Infinity, which Python's json reads back
    raise TypeError(f"metric {key!r} must be a scalar, got {type(value).__name__}")


def _git_info(directory: Path) -> dict:
    """The commit of the repository ``directory`` lies in, and whether its tree is dirty."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}
