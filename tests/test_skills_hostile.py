"""A skill library directory is data from a stranger.

Nothing in it may make the library read, write or delete anything outside its own folder
(symbolic links, FIFOs, ``file`` fields, names), allocate far more than its tensors need
(oversized manifests and tensor files, headers and specs that declare more than the bytes hold),
or hand out values that crash an ordinary consumer (JSON nested a thousand deep). Each test
builds a small library beside an "outside" folder, makes one hostile change, runs the library's
operations and checks that each either works harmlessly or raises the library's own one-line
error, and that the outside folder is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import skills.library as library_module
import skills.storage as storage_module
import ssm
from skills import SkillFileError, SkillLibrary, SkillLibraryError, SkillNotFoundError
from skills.extract import spec_for

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="POSIX file semantics")

MANIFEST_LIMIT = getattr(storage_module, "MAX_MANIFEST_BYTES", 128 << 20)


def _policy(seed: int = 0) -> ssm.SequencePolicy:
    torch.manual_seed(seed)
    return ssm.SequencePolicy(
        gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        gym.spaces.Box(-1, 1, (2,), np.float32),
        kind="gru", d_model=4, n_layers=1, encoder_hidden=8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A library with a plain skill, a base, and a skill stored as a delta on that base."""
    path = tmp_path_factory.mktemp("pristine") / "lib"
    lib = SkillLibrary.create(path)
    pol = _policy()
    spec = spec_for(pol)
    lib.add("plain", pol, spec, np.ones(3), source="test")
    lib.add_base("base", pol, spec)
    tuned = {k: v.clone() for k, v in pol.state_dict().items()}
    tuned["value.bias"] += 1
    lib.add("delta", tuned, spec, np.arange(1, 4), base="base")
    return path


@pytest.fixture
def lib_dir(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "lib", symlinks=True)
    return tmp_path / "lib"


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the library holding a victim file."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim.txt").write_text("keep me\n")
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``folder`` (links not followed): its mode and contents."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            data = (
                os.readlink(p).encode()
                if p.is_symlink()
                else (p.read_bytes() if p.is_file() else b"")
            )
            out[str(p.relative_to(folder))] = (st.st_mode, data)
    return out


def manifest(lib_dir: Path) -> dict:
    return json.loads((lib_dir / "manifest.json").read_text())


def write_manifest(lib_dir: Path, doc: dict) -> None:
    (lib_dir / "manifest.json").write_text(json.dumps(doc))


def one_line_error(fn, kind=SkillLibraryError) -> SkillLibraryError:
    """Run ``fn``; it must raise ``kind`` with a one-line message."""
    with pytest.raises(kind) as info:
        fn()
    assert "\n" not in str(info.value), str(info.value)
    return info.value


def exercise(lib_dir: Path) -> None:
    """Every operation, reading and writing: each works or raises a SkillLibraryError."""
    ops = [
        lambda lib: lib.list(),
        lambda lib: lib.get("plain").act(np.zeros(3, np.float32)),
        lambda lib: lib.get("delta").act(np.zeros(3, np.float32)),
        lambda lib: lib.verify(),
        lambda lib: lib.nearest(np.ones(3), k=2),
        lambda lib: lib.add("new", _policy(1), spec_for(_policy(1)), np.ones(3)),
        lambda lib: lib.add("plain", _policy(2), spec_for(_policy(2)), np.ones(3), replace=True),
        lambda lib: lib.remove("delta"),
        lambda lib: lib.collect_garbage(min_age_s=0),
    ]
    try:
        lib = SkillLibrary.open(lib_dir)
    except SkillLibraryError as e:
        assert "\n" not in str(e)
        return
    for op in ops:
        try:
            op(lib)
        except SkillLibraryError as e:
            assert "\n" not in str(e), str(e)


# -- symbolic links and special files -----------------------------------------------------------
def test_a_manifest_that_is_a_symlink_is_refused(lib_dir, outside):
    """Before: the manifest was read through the link (another folder's manifest, /dev/zero...)."""
    shutil.move(lib_dir / "manifest.json", outside / "manifest.json")
    (lib_dir / "manifest.json").symlink_to(outside / "manifest.json")
    before = snapshot(outside)
    e = one_line_error(lambda: SkillLibrary.open(lib_dir), SkillFileError)
    assert "symbolic link" in str(e) and e.path == lib_dir / "manifest.json"
    exercise(lib_dir)
    assert snapshot(outside) == before


@pytest.mark.parametrize("target", ["outside", "another entry"])
def test_a_tensor_file_that_is_a_symlink_is_not_followed(lib_dir, outside, target):
    """Before: ``get`` loaded whatever the link pointed at (even with a matching checksum)."""
    doc = manifest(lib_dir)
    link = lib_dir / doc["skills"]["plain"]["file"]
    if target == "outside":
        shutil.move(link, outside / "stolen.safetensors")
        link.symlink_to(outside / "stolen.safetensors")
    else:  # the base's file, under the plain skill's name and with the base's checksum
        link.unlink()
        link.symlink_to(lib_dir / doc["bases"]["base"]["file"])
        doc["skills"]["plain"]["sha256"] = doc["bases"]["base"]["sha256"]
        write_manifest(lib_dir, doc)
    before = snapshot(outside)
    lib = SkillLibrary.open(lib_dir)
    e = one_line_error(lambda: lib.get("plain"), SkillFileError)
    assert "symbolic link" in str(e) and e.path == link
    assert "plain" in lib.verify()
    lib.get("delta")  # the rest of the library still loads
    lib.remove("plain")  # removes the link itself, never its target
    assert not os.path.lexists(link)
    assert snapshot(outside) == before
    assert (lib_dir / doc["bases"]["base"]["file"]).is_file()


@pytest.mark.parametrize("sub", ["skills", "bases"])
def test_a_symlinked_subfolder_is_never_read_written_or_emptied(lib_dir, outside, sub):
    """Before: ``add`` wrote new tensor files into the link's target, ``remove`` and ``add(...,
    replace=True)`` deleted files there, and ``collect_garbage`` deleted every tensor file there
    that this manifest does not list (e.g. another library's)."""
    shutil.move(lib_dir / sub, outside / sub)
    (outside / sub / "0123456789abcdef0123456789abcdef.safetensors").write_bytes(b"another's")
    (lib_dir / sub).symlink_to(outside / sub, target_is_directory=True)
    before = snapshot(outside)
    lib = SkillLibrary.open(lib_dir)
    name = "plain" if sub == "skills" else "delta"
    e = one_line_error(lambda: lib.get(name), SkillFileError)
    assert "symbolic link" in str(e)
    one_line_error(lambda: lib.collect_garbage(min_age_s=0))
    if sub == "skills":
        one_line_error(lambda: lib.add("new", _policy(1), spec_for(_policy(1)), np.ones(3)))
        one_line_error(lambda: lib.remove("plain"))
        one_line_error(
            lambda: lib.add("plain", _policy(2), spec_for(_policy(2)), np.ones(3), replace=True)
        )
        assert "plain" in lib  # a refused remove leaves the manifest as it was
    else:
        one_line_error(lambda: lib.add_base("base2", _policy(1), spec_for(_policy(1))))
    exercise(lib_dir)
    assert snapshot(outside) == before


def test_a_lock_file_that_is_a_symlink_is_not_followed(lib_dir, outside):
    """Before: the writers' lock was opened with O_CREAT through the link, creating (or opening
    for writing) a file outside the library."""
    (lib_dir / ".lock").unlink(missing_ok=True)
    (lib_dir / ".lock").symlink_to(outside / "created-by-the-library")
    lib = SkillLibrary.open(lib_dir)
    e = one_line_error(lambda: lib.add("new", _policy(1), spec_for(_policy(1)), np.ones(3)))
    assert "symbolic link" in str(e)
    assert not (outside / "created-by-the-library").exists()
    assert lib.list() == ["plain", "delta"]


_FIFO_SCRIPT = """
import sys
from skills import SkillLibrary, SkillLibraryError
try:
    lib = SkillLibrary.open(sys.argv[1])
    lib.get("plain")
except SkillLibraryError as e:
    print("REFUSED", e)
"""


@pytest.mark.parametrize("which", ["manifest", "tensor file"])
def test_a_fifo_instead_of_a_file_is_refused_without_blocking(lib_dir, which):
    """Before: reading a FIFO blocked forever (a writer-less pipe); a character device such as
    /dev/zero behind a link would have filled the memory. Run in a subprocess so that a hang is
    a failure, not a stuck test session."""
    doc = manifest(lib_dir)
    target = lib_dir / ("manifest.json" if which == "manifest" else doc["skills"]["plain"]["file"])
    target.unlink()
    os.mkfifo(target)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _FIFO_SCRIPT, str(lib_dir)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a library whose {which} is a FIFO blocked")
    assert "REFUSED" in out.stdout and "not a regular file" in out.stdout, out.stdout + out.stderr


# -- names --------------------------------------------------------------------------------------
HEX = "0123456789abcdef0123456789abcdef"
BAD_FILES = [
    "../outside/victim.txt",
    f"skills/../../outside/{HEX}.safetensors",
    "ABSOLUTE",  # replaced by the outside victim's absolute path (never a system file)
    f"skills\\..\\..\\{HEX}.safetensors",
    f"skills/{HEX}.safetensors\n",
    f"skills/{HEX}.safetensors\x00.txt",
    f"skills//{HEX}.safetensors",
    f"./skills/{HEX}.safetensors",
    "skills/" + "０" * 32 + ".safetensors",  # fullwidth digits
    f"skills/{HEX.upper()}.safetensors",
    "skills/" + "a" * 5000 + ".safetensors",
]


@pytest.mark.parametrize("bad", BAD_FILES, ids=range(len(BAD_FILES)))
def test_file_fields_that_are_not_plain_entry_files_are_refused(lib_dir, outside, bad):
    """Before: ``skills/<id>.safetensors\\n`` passed the check (``$`` matches before a final
    newline), and ``add(..., replace=True)`` over an entry deleted whatever its ``file`` named,
    unchecked: ``../outside/victim.txt``, or any absolute path the process may delete."""
    doc = manifest(lib_dir)
    doc["skills"]["plain"]["file"] = str(outside / "victim.txt") if bad == "ABSOLUTE" else bad
    write_manifest(lib_dir, doc)
    before = snapshot(outside)
    lib = SkillLibrary.open(lib_dir)
    assert "plain" in lib.problems() and "invalid file" in lib.problems()["plain"]
    assert "plain" not in lib.list()
    one_line_error(lambda: lib.get("plain"))
    exercise(lib_dir)
    assert snapshot(outside) == before


PATHLIKE_NAMES = [
    "../../outside/victim.txt",
    "/outside/victim.txt",
    "a/b",
    "..\\..\\x",
    ".lock",
    ".",
]


def test_names_that_look_like_paths_never_become_paths(lib_dir, outside):
    """Names are manifest keys only; a skill called ``../../outside/victim.txt`` loads and
    removes like any other, touching only the file its entry lists (no hole before)."""
    doc = manifest(lib_dir)
    source = lib_dir / doc["skills"]["delta"]["file"]
    for i, name in enumerate(PATHLIKE_NAMES):
        file = f"skills/{i:032x}.safetensors"  # each its own copy: a name, not a shared file
        shutil.copy(source, lib_dir / file)
        doc["skills"][name] = {**doc["skills"]["delta"], "file": file}
    write_manifest(lib_dir, doc)
    before = snapshot(outside)
    lib = SkillLibrary.open(lib_dir)
    assert set(PATHLIKE_NAMES) <= set(lib.list())
    for name in PATHLIKE_NAMES:
        lib.get(name)
        lib.remove(name)
    assert snapshot(outside) == before
    lib.get("delta")


BAD_NAMES = [
    "a\x00b",
    "line\nbreak",
    "x" * 10_000,
    "\u202eevil.exe",  # right-to-left override: displays reversed
    "zero\u200bwidth",
    "para\u2029sep",
    "lone\ud800surrogate",
    "e\u0301",  # not NFC ("é" written as e + combining accent)
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_names_add_would_refuse_are_problems_when_read(lib_dir, bad):
    """Before: a manifest could list names ``add`` refuses (NUL, 10,000 characters) and names
    that display as something else; they were listed as skills like any other."""
    doc = manifest(lib_dir)
    doc["skills"][bad] = dict(doc["skills"]["delta"])
    doc["bases"][bad] = dict(doc["bases"]["base"])
    write_manifest(lib_dir, doc)
    lib = SkillLibrary.open(lib_dir)
    assert bad not in lib.list() and bad not in lib.bases()
    assert bad in lib.problems() and f"base:{bad}" in lib.problems()
    one_line_error(lambda: lib.get(bad))
    one_line_error(lambda: lib.add(bad, _policy(1), spec_for(_policy(1)), np.ones(3)))
    assert lib.list() == ["plain", "delta"]


# -- sizes --------------------------------------------------------------------------------------
def _peak_bytes(fn) -> int:
    """Peak bytes Python-level allocations (bytes, lists, numpy arrays) reach while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_an_oversized_manifest_is_refused_before_it_is_read(lib_dir):
    """Before: the whole file was read into memory (a sparse 1 TB file: all of it)."""
    with open(lib_dir / "manifest.json", "r+b") as f:
        f.truncate(MANIFEST_LIMIT + 1)  # sparse: no disk used
    caught = []
    peak = _peak_bytes(lambda: caught.append(one_line_error(lambda: SkillLibrary.open(lib_dir))))
    assert "bytes" in str(caught[0]) and "limit" in str(caught[0]), str(caught[0])
    assert peak < 8 << 20, peak


def _sparse_safetensors(path: Path, name: str, n: int) -> bytes:
    """A valid safetensors file of one float32 tensor of ``n`` zeros, the zeros sparse."""
    header = json.dumps({name: {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    header += " " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header.encode())
        f.truncate(8 + len(header) + 4 * n)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("checksum", ["wrong", "matching"])
def test_a_tensor_file_larger_than_its_architecture_needs_is_refused_before_reading(
    lib_dir, checksum
):
    """Before: the file was read (and with a matching checksum, decoded) in full, however much
    larger than the architecture's parameters it was; the network's parameters bound it now."""
    doc = manifest(lib_dir)
    path = lib_dir / doc["skills"]["plain"]["file"]
    digest = _sparse_safetensors(path, "value.bias", 16 << 20)  # 64 MiB of declared float32
    if checksum == "matching":
        doc["skills"]["plain"]["sha256"] = digest
        write_manifest(lib_dir, doc)
    lib = SkillLibrary.open(lib_dir)
    caught = []
    peak = _peak_bytes(lambda: caught.append(one_line_error(lambda: lib.get("plain"))))
    assert "bytes" in str(caught[0]) and str(path) in str(caught[0]), str(caught[0])
    assert peak < 8 << 20, peak
    lib.get("delta")


def _rewrite_tensor_file(lib_dir: Path, name: str, data: bytes) -> Path:
    doc = manifest(lib_dir)
    path = lib_dir / doc["skills"][name]["file"]
    path.write_bytes(data)
    doc["skills"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(lib_dir, doc)
    return path


@pytest.mark.parametrize(
    "header",
    [
        {"value.bias": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}},
        {"value.bias": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}},
        {"value.bias": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
        {"value.bias": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
        {"value.bias": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}},
        {"not.a.parameter": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        {"value.bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "x": []},
        "not an object",
    ],
    ids=range(8),
)
def test_tensor_headers_that_disagree_with_the_data_or_the_arch_are_refused_before_decoding(
    lib_dir, monkeypatch, header
):
    """The header is checked against the architecture's names, shapes and dtypes (and the data
    length) before safetensors allocates anything. Before: the file was decoded first and the
    mismatch found afterwards."""
    if isinstance(header, dict):  # metadata pads the file past the architecture's lower bound
        header = {"__metadata__": {"pad": "x" * 1024}, **header}
    ends = (
        [e["data_offsets"][1] for e in header.values() if "data_offsets" in e]
        if isinstance(header, dict)
        else []
    )
    data = bytes(max(ends) if ends and max(ends) <= 64 else 16)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = _rewrite_tensor_file(lib_dir, "plain", len(raw).to_bytes(8, "little") + raw + data)

    def no_decode(*a, **k):
        raise AssertionError("safetensors decoded a file whose header does not fit")

    monkeypatch.setattr(storage_module, "_st_load", no_decode)
    lib = SkillLibrary.open(lib_dir)
    e = one_line_error(lambda: lib.get("plain"), SkillFileError)
    assert e.path == path


@pytest.mark.parametrize("length", [2**63, 2**40, 7])
def test_a_header_length_beyond_the_file_is_refused(lib_dir, length):
    """The 8-byte header length is checked against the file (no hole before: safetensors
    checks it too)."""
    path = _rewrite_tensor_file(
        lib_dir, "plain", length.to_bytes(8, "little") + b"{}" * 8 + b" " * 1024
    )
    e = one_line_error(lambda: SkillLibrary.open(lib_dir).get("plain"), SkillFileError)
    assert e.path == path


def _arch_entry(**changes) -> dict:
    spec = spec_for(_policy()).to_json()
    spec.update(changes)
    return spec


HOSTILE_SPECS = [
    {"d_model": 10**9},
    {"d_model": -4},
    {"d_model": "64"},
    {"d_model": 64.0},
    {"d_model": True},
    {"n_layers": 10**6},
    {"n_layers": 0},
    {"encoder_hidden": 2**40},
    {"layer_kwargs": {"hidden": 10**9}},
    {"layer_kwargs": {"x": [1] * 10}},
    {"action": {"type": "box", "shape": [10**9]}},
    {"action": {"type": "box", "shape": [1024, 1024]}},  # no bounds: a million default bounds
    {"action": {"type": "multidiscrete", "nvec": [65536] * 4}},
    {"observation": {"type": "box", "shape": [4096, 4096]}},
    {"condition": [0.5] * 70_000},
    {"d_model": 4096, "n_layers": 256, "kind": "mamba", "layer_kwargs": {"expand": 64}},
    {"d_model": 8192, "encoder_hidden": 8192},  # 10^8 parameters: within the limit, no file
]


@pytest.mark.parametrize("changes", HOSTILE_SPECS, ids=range(len(HOSTILE_SPECS)))
def test_hostile_specs_are_refused_before_any_network_is_built(lib_dir, monkeypatch, changes):
    """A spec is validated when the manifest is read; one that describes far more parameters
    than its tensor file holds is refused before the network is built. Before: an action Box of
    a million elements without bounds (a 60-byte arch) cost seconds and ~100 MB on every open
    and ~1 GB at 16 million elements; the other cases were already refused."""
    doc = manifest(lib_dir)
    doc["archs"]["hostile"] = _arch_entry(**changes)
    doc["skills"]["plain"]["arch"] = "hostile"
    write_manifest(lib_dir, doc)

    def no_build(*a, **k):
        raise AssertionError("a network was built from a spec its tensor file does not fit")

    monkeypatch.setattr(library_module, "build_network", no_build)
    caught = []

    def run():
        lib = SkillLibrary.open(lib_dir)
        caught.append(one_line_error(lambda: lib.get("plain")))
        assert "plain" in lib.verify()

    assert _peak_bytes(run) < 32 << 20
    assert "plain" in str(caught[0])


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_metadata_is_a_problem_not_a_value(lib_dir):
    """Before: metadata nested 600 deep was handed out, and ``json.dumps(..., indent=1)`` (or
    ``copy.deepcopy``) of a skill's info raised RecursionError in the consumer."""
    doc = manifest(lib_dir)
    doc["skills"]["plain"]["metadata"]["deep"] = _nested(600)
    (lib_dir / "manifest.json").write_text(json.dumps(doc))
    lib = SkillLibrary.open(lib_dir)
    assert "plain" in lib.problems() and "nested" in lib.problems()["plain"]
    for name in lib.list():
        json.dumps(lib.info(name).metadata, indent=1)
    lib.get("delta")


def test_json_nested_beyond_the_parser_is_one_error(lib_dir):
    """No hole before: the parser's RecursionError was already a SkillFileError."""
    text = (lib_dir / "manifest.json").read_text()
    (lib_dir / "manifest.json").write_text(
        text[:-1] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    one_line_error(lambda: SkillLibrary.open(lib_dir), SkillFileError)


def test_add_refuses_metadata_the_library_would_refuse_to_read(lib_dir):
    """Before: ``add`` stored metadata nested 600 deep."""
    lib = SkillLibrary.open(lib_dir)
    e = one_line_error(
        lambda: lib.add(
            "deep", _policy(1), spec_for(_policy(1)), np.ones(3), metadata={"deep": _nested(600)}
        )
    )
    assert "nested" in str(e)
    assert "deep" not in lib.list()


def test_the_cache_of_architecture_shapes_is_bounded(lib_dir):
    """Before: every distinct architecture a manifest listed stayed in a module-level cache for
    the life of the process (a manifest of 100,000 archs: gigabytes)."""
    doc = manifest(lib_dir)
    for i in range(100):
        doc["archs"][f"a{i}"] = _arch_entry(encoder_hidden=9 + i)
        doc["skills"][f"s{i}"] = {**doc["skills"]["plain"], "arch": f"a{i}"}
    write_manifest(lib_dir, doc)
    problems = SkillLibrary.open(lib_dir).verify()
    assert all(f"s{i}" in problems for i in range(100))
    assert len(library_module._SHAPES) <= 64


# -- deleting and overwriting -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["remove", "replace"])
def test_deleting_an_entry_keeps_a_file_another_entry_lists(lib_dir, how):
    """Before: two manifest entries listing one file (a crafted manifest) lost it together when
    one was removed or replaced."""
    doc = manifest(lib_dir)
    doc["skills"]["twin"] = dict(doc["skills"]["plain"])
    write_manifest(lib_dir, doc)
    lib = SkillLibrary.open(lib_dir)
    if how == "remove":
        lib.remove("plain")
    else:
        lib.add("plain", _policy(2), spec_for(_policy(2)), np.ones(3), replace=True)
    lib.get("twin")


def test_collect_garbage_leaves_folders_and_link_targets_alone(lib_dir, outside):
    """Before: a folder named like a tensor file made ``collect_garbage`` raise IsADirectoryError;
    a link named like a temp file was (and is) removed as a link, its target untouched."""
    (lib_dir / "skills" / f"{HEX}.safetensors").mkdir()
    (lib_dir / ".evil.tmp").symlink_to(outside / "victim.txt")
    before = snapshot(outside)
    lib = SkillLibrary.open(lib_dir)
    lib.collect_garbage(min_age_s=0)
    assert (lib_dir / "skills" / f"{HEX}.safetensors").is_dir()
    assert not os.path.lexists(lib_dir / ".evil.tmp")
    assert snapshot(outside) == before
    lib.get("plain")


def test_removing_an_unknown_name_is_a_clear_error(lib_dir):
    lib = SkillLibrary.open(lib_dir)
    one_line_error(lambda: lib.remove("../../outside/victim.txt"), SkillNotFoundError)
