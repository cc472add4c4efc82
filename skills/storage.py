"""Files of a skill library: an inter-process lock and checksummed safetensors files (atomic writes
are :func:`ssm.util.write_atomic`).

Nothing here executes code from a file: tensors are read with ``safetensors`` (a JSON header and
raw bytes) after their sha256 is checked, and the manifest is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .errors import SkillFileError, SkillLibraryError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SkillFileError(f"{what} {path} is missing", path) from None
    except OSError as e:
        raise SkillFileError(f"{what} {path} cannot be read: {e}", path) from None


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = 120.0) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if absent), held for the ``with`` body.

    The lock belongs to the open file, so it is released when the process dies. ``flock`` is
    advisory and POSIX-only; readers of a library never take it (they rely on atomic renames).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise SkillLibraryError(
            "writing to a skill library needs fcntl.flock (POSIX); reading works everywhere", path
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SkillLibraryError(
                        f"could not lock {path} within {timeout:.0f} s; another writer holds it",
                        path,
                    ) from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- tensors ------------------------------------------------------------------------------------
def encode_tensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file's bytes (contiguous CPU copies; safetensors refuses shared storage)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return _st_save(plain, metadata=dict(metadata))


def decode_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; every failure becomes a :class:`SkillFileError` naming ``path``."""
    try:
        return _st_load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, RuntimeError) as e:
        raise SkillFileError(
            f"tensor file {path} is not a valid safetensors file: {e}", path
        ) from None


def load_tensor_file(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """Read ``path``, check its sha256 against the manifest's, then parse it."""
    data = read_bytes(path, "tensor file")
    got = sha256_hex(data)
    if got != sha256:
        raise SkillFileError(
            f"tensor file {path} fails its checksum (sha256 {got[:12]}…, the manifest expects "
            f"{sha256[:12]}…): it is truncated, corrupt or was replaced",
            path,
        )
    return decode_tensors(data, path)


# -- JSON ---------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_json(path: Path, what: str) -> Any:
    data = read_bytes(path, what)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SkillFileError(f"{what} {path} is not valid JSON: {e}", path) from None


def dump_json(payload: Any) -> bytes:
    # No indent: only then does json use its C encoder, which matters for 10,000-skill manifests.
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")
