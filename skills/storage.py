"""Files of a skill library: an inter-process lock and checksummed safetensors files (atomic writes
are :func:`ssm.util.write_atomic`).

Nothing here executes code from a file: tensors are read with ``safetensors`` (a JSON header and
raw bytes) after their sha256 is checked, and the manifest is JSON.

A library directory may come from a stranger, so every read opens a regular file without
following a symbolic link (``O_NOFOLLOW``; a FIFO or device is refused without blocking), with a
size limit checked before a byte is read, and JSON nested deeper than :data:`MAX_JSON_DEPTH` is
refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .errors import SkillFileError, SkillLibraryError

MAX_MANIFEST_BYTES = 128 << 20
"""the largest manifest read (~100,000 skills with modest metadata)"""
MAX_JSON_DEPTH = 64
"""the deepest nesting of JSON containers the library reads or stores"""
MAX_HEADER_BYTES = 1 << 20
"""the largest safetensors header read"""
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_LINK = "is a symbolic link; a skill library never follows links (one could point outside it)"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open_error(e: OSError, path: Path, what: str) -> SkillFileError:
    if isinstance(e, FileNotFoundError):
        return SkillFileError(f"{what} {path} is missing", path)
    if e.errno == errno.ELOOP:
        return SkillFileError(f"{what} {path} {_LINK}", path)
    return SkillFileError(f"{what} {path} cannot be read: {e.strerror or e}", path)


def check_not_link(path: Path, what: str) -> None:
    """Raise :class:`SkillFileError` if ``path`` is a symbolic link (absent is fine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise SkillFileError(f"{what} {path} cannot be inspected: {e}", path) from None
    if stat.S_ISLNK(st.st_mode):
        raise SkillFileError(f"{what} {path} {_LINK}", path)


def read_bytes(path: Path, what: str, limit: int) -> bytes:
    """The bytes of ``path``: a regular file (not a link, FIFO or device) of at most ``limit``
    bytes, checked before anything is read."""
    check_not_link(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise _open_error(e, path, what) from None
    except ValueError as e:  # an embedded NUL
        raise SkillFileError(f"{what} {path!r} is not a valid path: {e}", path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SkillFileError(f"{what} {path} is not a regular file", path)
        if st.st_size > limit:
            raise SkillFileError(
                f"{what} {path} has {st.st_size:,} bytes, more than the limit of {limit:,} bytes",
                path,
            )
        try:
            data = f.read(st.st_size + 1)
        except OSError as e:
            raise SkillFileError(f"{what} {path} cannot be read: {e}", path) from None
    if len(data) != st.st_size:
        raise SkillFileError(f"{what} {path} changed while it was read", path)
    return data


def json_depth(value: Any) -> int:
    """How deeply JSON containers nest in ``value`` (a scalar: 0; ``[1]``: 1), level by level
    (no recursion, so any depth is safe to measure)."""
    depth, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level:
        depth += 1
        below = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
    return depth


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
    check_not_link(path, "lock file")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
    except OSError as e:
        raise _open_error(e, path, "lock file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SkillFileError(f"lock file {path} is not a regular file", path)
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


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def tensor_header(data: bytes, path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The tensors a safetensors file declares (name -> dtype, shape), read from its JSON header
    without allocating any tensor; each declared shape x dtype must equal its data span, and the
    spans must tile the data exactly."""

    def bad(why: str) -> SkillFileError:
        return SkillFileError(f"tensor file {path} has an invalid safetensors header: {why}", path)

    if len(data) < 8:
        raise bad("the file is shorter than 8 bytes")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_HEADER_BYTES):
        raise bad(f"a header of {n:,} bytes in a file of {len(data):,}")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("not a JSON object")
    out, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"entry {name!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ST_DTYPES:
            raise bad(f"entry {name!r} has an unknown dtype {dtype!r}")
        ints = shape if isinstance(shape, list) else [None]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise bad(f"entry {name!r} has an invalid shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"entry {name!r} has invalid data_offsets {offsets!r}")
        size = _ST_DTYPES[dtype].itemsize
        for v in shape:
            size *= v
        if size != offsets[1] - offsets[0]:
            raise bad(f"entry {name!r} declares {size:,} bytes for a span of "
                      f"{offsets[1] - offsets[0]:,}")  # fmt: skip
        spans.append((offsets[0], offsets[1]))
        out[name] = (_ST_DTYPES[dtype], tuple(shape))
    end = 0
    for lo, hi in sorted(spans):
        if lo != end:
            raise bad("the tensors' data spans overlap or leave gaps")
        end = hi
    if end != len(data) - 8 - n:
        raise bad(f"the tensors span {end:,} bytes of data, the file holds {len(data) - 8 - n:,}")
    return out


def load_tensor_file(
    path: Path,
    sha256: str,
    limit: int,
    check: Callable[[dict[str, tuple[torch.dtype, tuple[int, ...]]]], str | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Read ``path`` (at most ``limit`` bytes), check its sha256 against the manifest's, check
    its header with ``check`` (a description of the mismatch, or None), then parse it."""
    data = read_bytes(path, "tensor file", limit)
    got = sha256_hex(data)
    if got != sha256:
        raise SkillFileError(
            f"tensor file {path} fails its checksum (sha256 {got[:12]}…, the manifest expects "
            f"{sha256[:12]}…): it is truncated, corrupt or was replaced",
            path,
        )
    declared = tensor_header(data, path)
    problem = check(declared) if check is not None else None
    if problem:
        raise SkillFileError(f"tensor file {path} does not fit its architecture: {problem}", path)
    return decode_tensors(data, path)


# -- JSON ---------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_json(path: Path, what: str, limit: int = MAX_MANIFEST_BYTES) -> Any:
    data = read_bytes(path, what, limit)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SkillFileError(f"{what} {path} is not valid JSON: {e}", path) from None


def dump_json(payload: Any) -> bytes:
    # No indent: only then does json use its C encoder, which matters for 10,000-skill manifests.
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")
