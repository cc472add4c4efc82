"""``SkillLibrary``: a directory of skills that several processes can add to at once.

Layout of a library directory::

    manifest.json        the index: schema version, architectures, bases, skills (JSON)
    skills/<id>.safetensors   a skill's parameters (all of them, or those that differ from its base)
    bases/<id>.safetensors    a shared base policy, stored once
    .lock                the writers' flock file

``manifest.json``::

    {"format": "skill-library", "schema_version": 1, "generation": 7, "embedding_dim": 8,
     "archs":  {"<spec id>": <PolicySpec JSON>},
     "bases":  {"<name>": {"id", "arch", "file", "sha256", "created"}},
     "skills": {"<name>": {"id", "arch", "base", "file", "sha256", "embedding", "metadata"}}}

``embedding`` is base64 of little-endian float32 (exact and compact); ``sha256`` is the checksum of
the whole tensor file. A skill with a ``base`` stores only the tensors that differ from the base
(exactly: no arithmetic, so loading is bit-exact); with no differing tensors (a skill-conditioned
base plus a ``condition``) it has no file at all.

Writes follow one protocol: tensor files are written under fresh unique names (temp file, fsync,
``os.replace``); then, holding an exclusive ``flock`` on ``.lock``, the writer re-reads the manifest
from disk, applies its change and replaces the manifest atomically. So concurrent writers lose no
entries, and a reader (which takes no lock) always sees a complete manifest. A file that is
missing, truncated, corrupt or fails its checksum raises :class:`SkillFileError` naming it, and the
other skills still load.

A library directory is untrusted input (libraries are shared): the library never follows a
symbolic link (``skills/``, ``bases/``, the manifest, the lock or a tensor file), reads a tensor
file only up to the size its architecture's parameters need (and checks its header against them
before decoding), refuses manifest names that ``add`` would refuse, and deletes only files whose
path it built itself and that no other entry lists.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import stat
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssm.util import write_atomic

from .errors import SkillFileError, SkillLibraryError, SkillNotFoundError
from .network import build_network, parameter_shapes
from .skill import Skill, SkillInfo
from .spec import ArchSpec
from .storage import (
    MAX_JSON_DEPTH,
    check_not_link,
    dump_json,
    encode_tensors,
    file_lock,
    json_depth,
    load_tensor_file,
    read_json,
    sha256_hex,
)

FORMAT = "skill-library"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
_FILE_RE = re.compile(r"(skills|bases)/[0-9a-f]{32}\.safetensors")  # always fullmatch
_ID_RE = re.compile(r"[0-9a-f]{32}")
_METADATA_DEPTH = MAX_JSON_DEPTH - 3
"""metadata sits three containers deep in the manifest (root, "skills", the entry)"""
_HEADER_ALLOWANCE = 16384
"""bytes a tensor file may hold beyond its tensors' data: the header's fixed part and metadata"""
_MISSING = object()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _empty_manifest() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generation": 0,
        "embedding_dim": None,
        "archs": {},
        "bases": {},
        "skills": {},
    }


def encode_embedding(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_embedding(text: Any, dim: int) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError("the embedding must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"the embedding is not valid base64 ({e})") from None
    if len(raw) != 4 * dim:
        raise ValueError(f"the embedding has {len(raw) // 4} values, the library {dim}")
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vec).all() or not np.any(vec):
        raise ValueError("the embedding must be finite and non-zero")
    vec.flags.writeable = False
    return vec


def _short(name: Any) -> str:
    """``repr(name)``, cut to 80 characters (names in a stranger's manifest may be long)."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "…"


def _check_name(name: Any, what: str = "skill") -> str:
    if not isinstance(name, str) or not name or len(name) > 256:
        raise SkillLibraryError(f"a {what} name must be a non-empty str of at most 256 characters")
    if name.isascii() and name.isprintable():
        return name  # the common case: nothing below can apply
    if any(ord(c) < 32 for c in name):
        raise SkillLibraryError(
            f"a {what} name must not contain control characters: {_short(name)}"
        )
    # Names are shown to people: nothing invisible, nothing that reorders or breaks the text, no
    # lone surrogates, and one spelling per name (NFC), so two names never look alike.
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name):
        raise SkillLibraryError(
            f"a {what} name must not contain invisible or format characters: {_short(name)}"
        )
    if not unicodedata.is_normalized("NFC", name):
        raise SkillLibraryError(f"a {what} name must be in Unicode NFC form: {_short(name)}")
    return name


def _as_params(params: Mapping[str, Tensor] | nn.Module) -> dict[str, Tensor]:
    if isinstance(params, nn.Module):
        params = params.state_dict()
    if not isinstance(params, Mapping):
        raise SkillLibraryError(f"params must be a dict of tensors or an nn.Module, got {params!r}")
    out = {}
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise SkillLibraryError(f"params must map str to Tensor; {k!r} maps to {type(v)}")
        if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all():
            raise SkillLibraryError(f"parameter {k!r} is not finite")
        out[k] = v.detach().to("cpu")
    return out


_SHAPES: OrderedDict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]] = OrderedDict()
_SHAPES_KEPT = 64
"""architectures whose shapes stay cached (least recently used go first): a manifest from a
stranger may list any number"""


def _expected(spec: ArchSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The parameter names, shapes and dtypes of ``spec``'s network (cached per spec)."""
    key = spec.spec_id()
    if key in _SHAPES:
        _SHAPES.move_to_end(key)
    else:
        _SHAPES[key] = parameter_shapes(spec)
        while len(_SHAPES) > _SHAPES_KEPT:
            _SHAPES.popitem(last=False)
    return _SHAPES[key]


def _file_limit(spec: ArchSpec) -> int:
    """The most bytes a tensor file of ``spec``'s parameters can need."""
    want = _expected(spec)
    data = sum(math.prod(shape) * dtype.itemsize for shape, dtype in want.values())
    return data + _HEADER_ALLOWANCE + sum(len(k) + 128 for k in want)


def _header_mismatch(
    declared: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], spec
) -> str | None:
    """How a tensor file's declared tensors fail ``spec``'s parameters (a subset may be
    declared: a skill on a base stores what differs), or None."""
    want = _expected(spec)
    unexpected = sorted(set(declared) - set(want))
    if unexpected:
        return f"unexpected tensor(s) {unexpected[:5]}"
    bad = [
        f"{k}: {shape} {dtype}, expected {want[k][0]} {want[k][1]}"
        for k, (dtype, shape) in declared.items()
        if shape != want[k][0] or dtype != want[k][1]
    ]
    return "wrong shape/dtype " + "; ".join(bad[:5]) if bad else None


def _mismatch(params: Mapping[str, Tensor], spec: ArchSpec) -> str | None:
    """A description of how ``params`` fail to fit ``spec``'s network, or None if they fit."""
    want = _expected(spec)
    missing = sorted(set(want) - set(params))
    unexpected = sorted(set(params) - set(want))
    bad = [
        f"{k}: {tuple(params[k].shape)} {params[k].dtype}, expected {want[k][0]} {want[k][1]}"
        for k in sorted(set(want) & set(params))
        if tuple(params[k].shape) != want[k][0] or params[k].dtype != want[k][1]
    ]
    if not (missing or unexpected or bad):
        return None
    parts = []
    if missing:
        parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    if bad:
        parts.append("wrong shape/dtype " + "; ".join(bad[:5]))
    return ", ".join(parts)


def _matches(info: SkillInfo, where: Callable[[SkillInfo], bool] | None, equals: dict) -> bool:
    if where is not None and not where(info):
        return False
    for key, expected in equals.items():
        if key == "name":
            value = info.name
        elif key == "base":
            value = info.base
        else:
            value = info.metadata.get(key, _MISSING)
        if callable(expected):
            if value is _MISSING or not expected(value):
                return False
        elif value is _MISSING or value != expected:
            return False
    return True


class SkillLibrary:
    """A skill library directory. ``SkillLibrary.open(path)`` or ``SkillLibrary.create(path)``.

    Reading: :meth:`list`, :meth:`info`, :meth:`get` (a :class:`Skill` that acts),
    :meth:`nearest` (k-NN by cosine similarity of embeddings), :meth:`find` (metadata filters).
    Writing: :meth:`add`, :meth:`add_many`, :meth:`add_base`, :meth:`remove`. Every read first
    checks whether another process changed the manifest, and re-reads it if so.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST
        self.lock_path = self.path / LOCK
        self._stat: tuple[int, int, int] | None = None
        self._raw: dict[str, Any] = _empty_manifest()
        self._archs: dict[str, ArchSpec] = {}
        self._infos: dict[str, SkillInfo] = {}
        self._bases: dict[str, dict[str, Any]] = {}
        self._broken: dict[str, str] = {}
        self._index: tuple[list[str], np.ndarray] | None = None
        self._base_cache: dict[str, dict[str, Tensor]] = {}

    def __repr__(self) -> str:
        return f"SkillLibrary({str(self.path)!r})"

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = False) -> SkillLibrary:
        """Open the library at ``path`` (``create=True``: create it if it does not exist)."""
        lib = cls(path)
        if not lib.manifest_path.exists():
            if create:
                return cls.create(path, exist_ok=True)
            raise SkillFileError(
                f"{lib.manifest_path} is missing: {lib.path} is not a skill library "
                "(use SkillLibrary.create)",
                lib.manifest_path,
            )
        lib._sync(force=True)
        return lib

    @classmethod
    def create(cls, path: str | Path, exist_ok: bool = False) -> SkillLibrary:
        """Create an empty library at ``path`` (a new or empty directory)."""
        lib = cls(path)
        lib.path.mkdir(parents=True, exist_ok=True)
        with file_lock(lib.lock_path):
            if lib.manifest_path.exists():
                if not exist_ok:
                    raise SkillLibraryError(
                        f"{lib.path} is already a skill library", lib.manifest_path
                    )
            else:
                write_atomic(lib.manifest_path, dump_json(_empty_manifest()))
        lib._sync(force=True)
        return lib

    # -- the manifest ---------------------------------------------------------------------------
    def _stat_key(self) -> tuple[int, int, int]:
        try:
            st = os.lstat(self.manifest_path)
        except FileNotFoundError:
            raise SkillFileError(f"{self.manifest_path} is missing", self.manifest_path) from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _sync(self, force: bool = False) -> None:
        """Re-read the manifest if it changed on disk (or ``force``)."""
        key = self._stat_key()
        if force or key != self._stat:
            self._parse(self._read_raw())
            self._stat = key

    def _read_raw(self) -> dict[str, Any]:
        raw = read_json(self.manifest_path, "manifest")
        self._check_header(raw)
        return raw

    def _check_header(self, raw: Any) -> None:
        where = self.manifest_path
        if not isinstance(raw, dict):
            raise SkillFileError(f"manifest {where} must hold a JSON object", where)
        if raw.get("format") != FORMAT:
            raise SkillFileError(
                f"manifest {where} is not a skill-library manifest (format "
                f"{raw.get('format')!r}, expected {FORMAT!r})",
                where,
            )
        version = raw.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SkillFileError(
                f"manifest {where} has an invalid schema_version {version!r}", where
            )
        if version > SCHEMA_VERSION:
            raise SkillFileError(
                f"manifest {where} has schema_version {version}, newer than this code "
                f"understands ({SCHEMA_VERSION}); upgrade the skills package",
                where,
            )
        for key in ("archs", "bases", "skills"):
            if not isinstance(raw.get(key), dict):
                raise SkillFileError(f"manifest {where}: {key!r} must be a JSON object", where)
        dim = raw.get("embedding_dim")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise SkillFileError(f"manifest {where}: invalid embedding_dim {dim!r}", where)
        gen = raw.get("generation", 0)
        if isinstance(gen, bool) or not isinstance(gen, int):
            raise SkillFileError(f"manifest {where}: invalid generation {gen!r}", where)

    def _parse(self, raw: dict[str, Any]) -> None:
        """Build the in-memory index. A bad entry is recorded in ``problems()``, not raised, so
        one damaged entry leaves the rest of the library usable."""
        archs: dict[str, ArchSpec] = {}
        arch_errors: dict[str, str] = {}
        for arch_id, spec in raw["archs"].items():
            try:
                archs[arch_id] = ArchSpec.from_json(spec)
            except ValueError as e:  # PolicySpec validation: reported per entry that uses it
                arch_errors[arch_id] = str(e)
        broken: dict[str, str] = {}
        bases: dict[str, dict[str, Any]] = {}
        for name, entry in raw["bases"].items():
            try:
                _check_name(name, "base")
                bases[name] = self._parse_base(entry, archs, arch_errors)
            except (ValueError, TypeError) as e:
                broken[f"base:{name}"] = f"base {_short(name)} in {self.manifest_path}: {e}"
        infos: dict[str, SkillInfo] = {}
        dim = raw.get("embedding_dim")
        for name, entry in raw["skills"].items():
            try:
                _check_name(name)
                infos[name] = self._parse_skill(name, entry, archs, arch_errors, dim)
            except (ValueError, TypeError) as e:
                broken[name] = f"skill {_short(name)} in {self.manifest_path}: {e}"
        self._raw, self._archs, self._bases, self._infos = raw, archs, bases, infos
        self._broken, self._index = broken, None

    @staticmethod
    def _check_file(entry: Mapping[str, Any], optional: bool) -> None:
        file, digest = entry.get("file"), entry.get("sha256")
        if file is None and optional:
            if digest is not None:
                raise ValueError("sha256 given without a file")
            return
        if not isinstance(file, str) or not _FILE_RE.fullmatch(file):
            raise ValueError(f"invalid file {file!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"invalid sha256 {digest!r}")

    def _arch_of(self, entry, archs, arch_errors) -> ArchSpec:
        arch_id = entry.get("arch")
        if not isinstance(arch_id, str):
            raise ValueError(f"invalid arch {arch_id!r}")
        if arch_id in arch_errors:
            raise ValueError(arch_errors[arch_id])
        if arch_id not in archs:
            raise ValueError(f"unknown arch {arch_id!r}")
        return archs[arch_id]

    def _parse_base(self, entry: Any, archs, arch_errors) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise ValueError("the entry must be a JSON object")
        self._check_file(entry, optional=False)
        return {**entry, "spec": self._arch_of(entry, archs, arch_errors)}

    def _parse_skill(self, name, entry, archs, arch_errors, dim) -> SkillInfo:
        if not isinstance(entry, dict):
            raise ValueError("the entry must be a JSON object")
        if not isinstance(entry.get("id"), str) or not _ID_RE.fullmatch(entry["id"]):
            raise ValueError(f"invalid id {entry.get('id')!r}")
        base = entry.get("base")
        if base is not None and not isinstance(base, str):
            raise ValueError(f"invalid base {base!r}")
        self._check_file(entry, optional=base is not None)
        if dim is None:
            raise ValueError("the library has no embedding_dim")
        metadata = entry.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be a JSON object")
        if json_depth(metadata) > _METADATA_DEPTH:
            raise ValueError(f"metadata is nested deeper than {_METADATA_DEPTH} levels")
        return SkillInfo(
            name=name,
            id=entry["id"],
            arch=self._arch_of(entry, archs, arch_errors),
            embedding=decode_embedding(entry.get("embedding"), dim),
            metadata=metadata,
            base=base,
            file=entry.get("file"),
            sha256=entry.get("sha256"),
        )

    # -- reading --------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._sync()
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        self._sync()
        return name in self._infos

    @property
    def embedding_dim(self) -> int | None:
        self._sync()
        return self._raw.get("embedding_dim")

    @property
    def generation(self) -> int:
        """How many writes the manifest has seen."""
        self._sync()
        return int(self._raw.get("generation", 0))

    def list(self) -> list[str]:
        """The names of the (readable) skills, in the order they were added."""
        self._sync()
        return list(self._infos)

    def bases(self) -> list[str]:
        self._sync()
        return list(self._bases)

    def problems(self) -> dict[str, str]:
        """Manifest entries that could not be parsed (name -> reason). Files are checked by
        :meth:`verify`."""
        self._sync()
        return dict(self._broken)

    def info(self, name: str) -> SkillInfo:
        """The manifest's description of skill ``name`` (no tensors are read)."""
        self._sync()
        if name in self._infos:
            return self._infos[name]
        if name in self._broken:
            raise SkillLibraryError(self._broken[name], self.manifest_path)
        raise SkillNotFoundError(self._unknown(name, list(self._infos), "skill"))

    def _unknown(self, name: str, known: list[str], what: str) -> str:
        shown = ", ".join(repr(n) for n in known[:10]) + (" …" if len(known) > 10 else "")
        return f"no {what} named {name!r} in {self.path} ({len(known)} {what}s: {shown})"

    def base_params(self, name: str) -> dict[str, Tensor]:
        """The parameters of base ``name`` (checksummed; cached by content)."""
        self._sync()
        if f"base:{name}" in self._broken:
            raise SkillLibraryError(self._broken[f"base:{name}"], self.manifest_path)
        if name not in self._bases:
            raise SkillNotFoundError(self._unknown(name, list(self._bases), "base"))
        entry = self._bases[name]
        digest = entry["sha256"]
        if digest not in self._base_cache:
            path = self._tensor_path(entry["file"])
            self._check_plausible(entry["spec"], path, f"base {name!r}")
            tensors = self._load(path, digest, f"base {name!r}", entry["spec"])
            problem = self._fit(tensors, entry["spec"], f"base {name!r}")
            if problem:
                raise SkillFileError(
                    f"base file {path} does not fit the architecture {self.manifest_path} gives "
                    f"base {name!r}: {problem}",
                    path,
                )
            self._base_cache[digest] = tensors
        return dict(self._base_cache[digest])

    def params(self, name: str) -> dict[str, Tensor]:
        """The full parameters of skill ``name`` (its base overlaid with its own tensors)."""
        info = self.info(name)
        own = None if info.file is None else self._tensor_path(info.file)
        if info.base is None:  # a skill on a base: the base's file is checked by base_params
            self._check_plausible(info.arch, own, f"skill {name!r}")
        params: dict[str, Tensor] = {}
        if info.base is not None:
            try:
                params.update(self.base_params(info.base))
            except SkillNotFoundError:
                raise SkillLibraryError(
                    f"skill {name!r} needs base {info.base!r}, which {self.manifest_path} lacks",
                    self.manifest_path,
                ) from None
        if own is not None:
            params.update(self._load(own, info.sha256 or "", f"skill {name!r}", info.arch))
        problem = self._fit(params, info.arch, f"skill {name!r}")
        if problem:
            where = self.path / info.file if info.file else self.manifest_path
            raise SkillFileError(
                f"the parameters of skill {name!r} (tensor file {info.file}, base {info.base!r}, "
                f"as {self.manifest_path} lists them) do not fit its architecture: {problem}",
                where,
            )
        return params

    def _tensor_path(self, file: str) -> Path:
        """The path of a manifest's ``file`` (``skills/<id>.safetensors``): refused unless it is
        exactly that form and its folder is not a symbolic link."""
        if not isinstance(file, str) or not _FILE_RE.fullmatch(file):
            raise SkillFileError(f"{self.manifest_path} lists an invalid file {_short(file)}",
                                 self.manifest_path)  # fmt: skip
        folder = self.path / file.split("/")[0]
        check_not_link(folder, "library folder")
        if folder.exists() and not folder.is_dir():
            raise SkillFileError(f"library folder {folder} is not a directory", folder)
        return self.path / file

    def _check_plausible(self, spec: ArchSpec, file: Path | None, what: str) -> None:
        """Refuse a spec that needs more parameter bytes than its full parameter ``file`` holds
        (None: no file), before any network, even on the ``meta`` device, is built from it."""
        held = 0
        if file is not None:
            try:
                st = os.lstat(file)
            except OSError:
                return  # reported when the file is read
            if not stat.S_ISREG(st.st_mode):
                return  # a link or a special file: refused when it is read
            held = st.st_size
        need = spec.min_parameters * (8 if spec.dtype == "float64" else 4)
        if need > held:
            where = file if file is not None else self.manifest_path
            raise SkillFileError(
                f"{what} in {self.manifest_path} has an architecture of at least {need:,} bytes "
                f"of parameters, but its tensor file {where} holds {held:,}",
                where,
            )

    def _load(self, path: Path, sha256: str, what: str, spec: ArchSpec) -> dict[str, Tensor]:
        """:func:`load_tensor_file` (at most the bytes ``spec``'s parameters need, its header
        checked against them before decoding), its errors saying which entry wanted it."""
        try:
            limit = _file_limit(spec)
        except SkillLibraryError as e:
            raise SkillLibraryError(f"{what} in {self.manifest_path}: {e}",
                                    self.manifest_path) from None  # fmt: skip
        try:
            return load_tensor_file(path, sha256, limit, lambda d: _header_mismatch(d, spec))
        except SkillFileError as e:
            raise SkillFileError(f"{e} ({what}, listed in {self.manifest_path})", path) from None

    def _fit(self, params: Mapping[str, Tensor], spec: ArchSpec, what: str) -> str | None:
        """:func:`_mismatch`, with a spec that cannot be built reported against the manifest."""
        try:
            return _mismatch(params, spec)
        except SkillLibraryError as e:
            raise SkillLibraryError(
                f"{what} in {self.manifest_path}: {e}", self.manifest_path
            ) from None

    def get(self, name: str) -> Skill:
        """Skill ``name``, rebuilt from its spec and loaded (no pickle), ready to ``act``."""
        info = self.info(name)
        params = self.params(name)
        try:
            network = build_network(info.arch)
            network.load_state_dict(params, strict=True)
        except (SkillLibraryError, RuntimeError) as e:
            raise SkillLibraryError(
                f"skill {name!r} in {self.manifest_path} cannot be rebuilt: {e}", self.manifest_path
            ) from None
        network.eval().requires_grad_(False)
        return Skill(info, network)

    def verify(self) -> dict[str, str]:
        """Load every base and skill, checking checksums and shapes; returns name -> problem
        (empty when the library is sound). Never raises for a bad entry."""
        problems = self.problems()
        self._base_cache.clear()
        for name in self.bases():
            try:
                self.base_params(name)
            except SkillLibraryError as e:
                problems[f"base:{name}"] = str(e)
        for name in self.list():
            try:
                self.params(name)
            except SkillLibraryError as e:
                problems[name] = str(e)
        return problems

    # -- queries --------------------------------------------------------------------------------
    def find(self, where: Callable[[SkillInfo], bool] | None = None, **equals: Any) -> list[str]:
        """Names of the skills whose info satisfies ``where`` and whose metadata has every
        ``key=value`` of ``equals`` (a callable value is a predicate on that field; ``name`` and
        ``base`` refer to the entry itself).
        E.g. ``find(source="diayn", success=lambda s: s > 0.9)``.
        """
        self._sync()
        return [n for n, info in self._infos.items() if _matches(info, where, equals)]

    def embeddings(self) -> tuple[list[str], np.ndarray]:
        """``(names, E)``: the skills' embeddings stacked into ``E (N, d)`` float32."""
        self._sync()
        names = list(self._infos)
        dim = self._raw.get("embedding_dim") or 0
        if not names:
            return names, np.zeros((0, dim), np.float32)
        return names, np.stack([self._infos[n].embedding for n in names])

    def _unit_index(self) -> tuple[list[str], np.ndarray]:
        self._sync()
        if self._index is None:
            names, emb = self.embeddings()
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            self._index = (names, emb / np.maximum(norms, 1e-30))
        return self._index

    def nearest(
        self,
        query: Any,
        k: int = 5,
        where: Callable[[SkillInfo], bool] | None = None,
        **equals: Any,
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """The ``k`` skills whose embeddings are most cosine-similar to ``query``, best first, as
        ``(name, similarity)``; among those that pass ``where``/``equals`` (as in :meth:`find`).

        ``query`` is ``(d,)`` (one list back) or ``(Q, d)`` (a list per query). One matrix
        product over the stacked, unit-normalised embeddings, then ``topk``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = np.asarray(query, dtype=np.float32)
        single = q.ndim == 1
        q = q[None] if single else q
        names, unit = self._unit_index()
        dim = unit.shape[1] if names else None  # no (readable) skills: any d is fine
        if q.ndim != 2 or (dim is not None and q.shape[1] != dim):
            raise ValueError(f"query must have shape (d,) or (Q, d) with d={dim}, got {q.shape}")
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        if not np.isfinite(q).all() or (qn == 0).any():
            raise ValueError("query embeddings must be finite and non-zero")
        if where is not None or equals:
            keep = [i for i, n in enumerate(names) if _matches(self._infos[n], where, equals)]
            names, unit = [names[i] for i in keep], unit[keep]
        if not names:
            return [] if single else [[] for _ in range(len(q))]
        sims = torch.from_numpy((q / qn) @ unit.T)  # (Q, N) cosine similarities
        val, idx = sims.topk(min(k, len(names)), dim=1)  # (Q, k), best first
        results = [
            [(names[i], s) for i, s in zip(ri, rv)] for ri, rv in zip(idx.tolist(), val.tolist())
        ]
        return results[0] if single else results

    # -- writing --------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        params: Mapping[str, Tensor] | nn.Module,
        arch: ArchSpec,
        embedding: Any,
        *,
        base: str | None = None,
        source: str | None = None,
        returns: float | None = None,
        success: float | None = None,
        budget: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        replace: bool = False,
    ) -> SkillInfo:
        """Add skill ``name``: its full ``params`` (a state dict or the module), the ``arch`` that
        rebuilds its network, an ``embedding`` vector and metadata.

        With ``base``, only the tensors that differ from that base are stored. ``source``,
        ``returns``, ``success``, ``budget`` (e.g. ``{"env_steps": 1e6}``) and ``provenance``
        (e.g. commit, run directory, task spec) go into the metadata beside ``metadata``'s own
        keys, with ``created`` added. An existing name is an error unless ``replace``.
        """
        item = {
            "name": name,
            "params": params,
            "arch": arch,
            "embedding": embedding,
            "base": base,
            "source": source,
            "returns": returns,
            "success": success,
            "budget": budget,
            "provenance": provenance,
            "metadata": metadata,
        }
        return self.add_many([item], replace=replace)[0]

    def add_many(
        self, items: Iterable[Mapping[str, Any]], replace: bool = False
    ) -> list[SkillInfo]:
        """Add several skills (each a dict of :meth:`add`'s arguments) under one lock and one
        manifest write; all or none are added."""
        prepared = [self._prepare(dict(item)) for item in items]
        names = [p["name"] for p in prepared]
        if len(set(names)) != len(names):
            raise SkillLibraryError(f"duplicate names in one add_many call: {names}")
        written: list[Path] = []
        old_files: list[Any] = []
        try:
            for p in prepared:
                if p["data"] is not None:
                    path = self._tensor_path(p["entry"]["file"])
                    write_atomic(path, p["data"])
                    written.append(path)
            with file_lock(self.lock_path):
                raw = self._read_raw()
                for p in prepared:
                    old = self._insert(raw, p, replace)
                    if old is not None:
                        old_files.append(old)
                self._write(raw)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        self._delete_unlisted(old_files, raw)
        return [self._infos[n] for n in names]

    def _delete_unlisted(self, files: Iterable[Any], raw: Mapping[str, Any]) -> None:
        """Delete the tensor files of removed or replaced entries: only paths of the form the
        library writes (never a manifest's ``../`` or absolute path), in a folder that is not a
        link, and only where no remaining entry lists the same file."""
        listed = {
            e.get("file")
            for group in ("skills", "bases")
            for e in raw[group].values()
            if isinstance(e, dict)
        }
        for file in files:
            if isinstance(file, str) and _FILE_RE.fullmatch(file) and file not in listed:
                try:
                    self._tensor_path(file).unlink(missing_ok=True)
                except SkillFileError:
                    pass  # a linked folder: the file is not the library's to delete

    def _prepare(self, item: dict[str, Any]) -> dict[str, Any]:
        """Validate one item and encode its tensor file (outside the lock)."""
        unknown = sorted(set(item) - {
            "name", "params", "arch", "embedding", "base", "source", "returns", "success",
            "budget", "provenance", "metadata",
        })  # fmt: skip
        if unknown:
            raise SkillLibraryError(f"unknown skill field(s) {unknown}")
        name = _check_name(item.get("name"))
        arch = item.get("arch")
        if not isinstance(arch, ArchSpec):
            raise SkillLibraryError(f"skill {name!r}: arch must be an ArchSpec, got {arch!r}")
        params = _as_params(item.get("params"))
        problem = _mismatch(params, arch)
        if problem:
            raise SkillLibraryError(f"skill {name!r}: params do not fit the arch: {problem}")
        emb = np.asarray(item.get("embedding"), dtype=np.float32)
        if emb.ndim != 1 or emb.size == 0 or not np.isfinite(emb).all() or not np.any(emb):
            raise SkillLibraryError(
                f"skill {name!r}: the embedding must be a finite, non-zero 1-D vector, "
                f"got shape {emb.shape}"
            )
        meta = self._metadata(name, item)
        base = item.get("base")
        base_sha = None
        stored = params
        if base is not None:
            base_params = self.base_params(_check_name(base, "base"))
            base_sha = self._bases[base]["sha256"]
            stored = {
                k: v
                for k, v in params.items()
                if k not in base_params
                or base_params[k].dtype != v.dtype
                or base_params[k].shape != v.shape
                or not torch.equal(base_params[k], v)
            }
        skill_id = uuid.uuid4().hex
        data = None
        entry: dict[str, Any] = {
            "id": skill_id,
            "arch": arch.spec_id(),
            "base": base,
            "file": None,
            "sha256": None,
            "embedding": encode_embedding(emb),
            "metadata": meta,
        }
        if stored or base is None:
            data = encode_tensors(stored, {"skill": name, "format": FORMAT})
            entry["file"] = f"skills/{skill_id}.safetensors"
            entry["sha256"] = sha256_hex(data)
        return {
            "name": name,
            "arch": arch,
            "entry": entry,
            "data": data,
            "dim": int(emb.size),
            "base_sha": base_sha,
        }

    @staticmethod
    def _metadata(name: str, item: Mapping[str, Any]) -> dict[str, Any]:
        meta = dict(item.get("metadata") or {})
        for key in ("source", "returns", "success", "budget", "provenance"):
            value = item.get(key)
            if value is not None:
                if isinstance(value, Mapping):
                    value = dict(value)
                elif isinstance(value, (np.floating, np.integer)):
                    value = value.item()
                meta[key] = value
        meta.setdefault("created", _now())
        if json_depth(meta) > _METADATA_DEPTH:
            raise SkillLibraryError(
                f"skill {name!r}: metadata is nested deeper than {_METADATA_DEPTH} levels"
            )
        for key, value in meta.items():
            if not isinstance(key, str):
                raise SkillLibraryError(f"skill {name!r}: metadata keys must be str, got {key!r}")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise SkillLibraryError(
                    f"skill {name!r}: metadata {key!r} must be JSON-safe (finite numbers, str, "
                    f"lists, dicts): {e}"
                ) from None
        return meta

    def _insert(self, raw: dict[str, Any], p: dict[str, Any], replace: bool) -> str | None:
        """Apply one prepared skill to the freshly re-read ``raw`` manifest (under the lock);
        returns the file of a replaced entry."""
        name = p["name"]
        skills = raw["skills"]
        if name in skills and not replace:
            raise SkillLibraryError(
                f"a skill named {name!r} already exists in {self.path} (pass replace=True)",
                self.manifest_path,
            )
        dim = raw.get("embedding_dim")
        if dim is None:
            raw["embedding_dim"] = dim = p["dim"]
        if p["dim"] != dim:
            raise SkillLibraryError(
                f"skill {name!r}: embedding of size {p['dim']}, the library's are {dim}",
                self.manifest_path,
            )
        base = p["entry"]["base"]
        if base is not None:
            entry = raw["bases"].get(base)
            if not isinstance(entry, dict) or entry.get("sha256") != p["base_sha"]:
                raise SkillLibraryError(
                    f"skill {name!r}: base {base!r} was removed or replaced meanwhile",
                    self.manifest_path,
                )
        raw["archs"][p["entry"]["arch"]] = p["arch"].to_json()
        old = skills.get(name)
        skills.pop(name, None)  # a replaced skill moves to the end
        skills[name] = p["entry"]
        return old.get("file") if isinstance(old, dict) else None

    def _write(self, raw: dict[str, Any]) -> None:
        """Write the manifest (under the lock), dropping architectures nothing refers to."""
        used = {e.get("arch") for e in raw["skills"].values() if isinstance(e, dict)}
        used |= {e.get("arch") for e in raw["bases"].values() if isinstance(e, dict)}
        raw["archs"] = {k: v for k, v in raw["archs"].items() if k in used}
        raw["generation"] = int(raw.get("generation", 0)) + 1
        write_atomic(self.manifest_path, dump_json(raw))
        self._parse(raw)
        self._stat = self._stat_key()

    def add_base(self, name: str, params: Mapping[str, Tensor] | nn.Module, arch: ArchSpec) -> None:
        """Store a shared base policy once; skills added with ``base=name`` store only what
        differs from it."""
        name = _check_name(name, "base")
        if not isinstance(arch, ArchSpec):
            raise SkillLibraryError(f"base {name!r}: arch must be an ArchSpec, got {arch!r}")
        tensors = _as_params(params)
        problem = _mismatch(tensors, arch)
        if problem:
            raise SkillLibraryError(f"base {name!r}: params do not fit the arch: {problem}")
        base_id = uuid.uuid4().hex
        data = encode_tensors(tensors, {"base": name, "format": FORMAT})
        path = self._tensor_path(f"bases/{base_id}.safetensors")
        write_atomic(path, data)
        try:
            with file_lock(self.lock_path):
                raw = self._read_raw()
                if name in raw["bases"]:
                    raise SkillLibraryError(
                        f"a base named {name!r} already exists in {self.path}", self.manifest_path
                    )
                raw["archs"][arch.spec_id()] = arch.to_json()
                raw["bases"][name] = {
                    "id": base_id,
                    "arch": arch.spec_id(),
                    "file": f"bases/{base_id}.safetensors",
                    "sha256": sha256_hex(data),
                    "created": _now(),
                }
                self._write(raw)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def remove(self, name: str) -> None:
        """Remove skill ``name`` and its tensor file. (A process that already read the old
        manifest and then loads the skill gets a ``SkillFileError`` saying the file is gone.)"""
        with file_lock(self.lock_path):
            raw = self._read_raw()
            if name not in raw["skills"]:
                raise SkillNotFoundError(self._unknown(name, list(raw["skills"]), "skill"))
            entry = raw["skills"].pop(name)
            file = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(file, str) and _FILE_RE.fullmatch(file):
                self._tensor_path(file)  # a linked folder: refused before the manifest changes
            self._write(raw)
        self._delete_unlisted([file], raw)

    def remove_base(self, name: str) -> None:
        """Remove base ``name``; refused while skills refer to it."""
        with file_lock(self.lock_path):
            raw = self._read_raw()
            if name not in raw["bases"]:
                raise SkillNotFoundError(self._unknown(name, list(raw["bases"]), "base"))
            users = [
                n for n, e in raw["skills"].items() if isinstance(e, dict) and e.get("base") == name
            ]
            if users:
                raise SkillLibraryError(
                    f"base {name!r} is used by {len(users)} skill(s), e.g. {users[:3]}; remove "
                    "them first",
                    self.manifest_path,
                )
            entry = raw["bases"].pop(name)
            file = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(file, str) and _FILE_RE.fullmatch(file):
                self._tensor_path(file)  # a linked folder: refused before the manifest changes
            self._write(raw)
        self._delete_unlisted([file], raw)

    def collect_garbage(self, min_age_s: float = 3600.0) -> list[Path]:
        """Delete tensor and temp files that the manifest does not reference and that are older
        than ``min_age_s`` (a writer that crashed between writing its file and the manifest
        leaves one; the age keeps the files of writers still in flight)."""
        removed = []
        with file_lock(self.lock_path):
            raw = self._read_raw()
            used = {
                e.get("file")
                for group in ("skills", "bases")
                for e in raw[group].values()
                if isinstance(e, dict)
            }
            now = time.time()
            for sub in ("skills", "bases", "."):
                folder = self.path / sub
                check_not_link(folder, "library folder")
                if not folder.is_dir():
                    continue
                for f in folder.iterdir():
                    rel = f"{sub}/{f.name}"
                    is_tensor = sub != "." and f.suffix == ".safetensors" and rel not in used
                    is_tmp = f.name.startswith(".") and f.name.endswith(".tmp")
                    if not (is_tensor or is_tmp):
                        continue
                    st = f.lstat()  # a link is judged (and removed) as itself, never its target
                    if stat.S_ISDIR(st.st_mode) or now - st.st_mtime < min_age_s:
                        continue
                    f.unlink(missing_ok=True)
                    removed.append(f)
        return removed
