"""Atomic file writes: a reader sees the old file or the complete new one, never a partial write.

The recipe: write to a temp file in the destination's directory (so the rename stays on one file
system), flush and ``fsync`` it, ``os.replace`` it over the destination, then ``fsync`` the
directory so the rename itself survives a crash (where the OS lets a directory be opened).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "write_atomic", "write_json_atomic", "write_text_atomic"]


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: a no-op where directories cannot
    be opened or synced, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns ``path`` as a :class:`Path`.

    Missing parent directories are created. The file gets the permissions a plain ``open`` would
    give it (``0o666`` less the umask). On any failure the temp file is removed and the old file,
    if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of ``text`` encoded as UTF-8."""
    return write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any, indent: int | None = 1) -> Path:
    """:func:`write_atomic` of ``payload`` as JSON (``indent`` as in :func:`json.dumps`), with a
    trailing newline."""
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")
