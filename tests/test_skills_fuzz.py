"""Damaged libraries give ``SkillLibraryError``s that name the file, never a crash deep inside.

Hypothesis damages a small library (manifest bytes, manifest JSON values, tensor file bytes, with
and without a matching checksum) and then exercises every reading operation. An operation may
succeed (the damage missed anything that matters) or raise the library's own error type naming
the damaged file; anything else fails the test.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssm
from skills import SkillLibrary, SkillLibraryError, SkillNotFoundError
from skills.extract import spec_for

FUZZ = settings(
    max_examples=int(__import__("os").environ.get("SKILLS_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def pristine() -> Path:
    """A library with a plain skill, a base, and a skill stored as a delta on that base."""
    root = Path(tempfile.mkdtemp(prefix="skills-fuzz-"))
    lib = SkillLibrary.create(root / "lib")
    torch.manual_seed(0)
    pol = ssm.SequencePolicy(
        gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        gym.spaces.Box(-1, 1, (2,), np.float32),
        kind="gru", d_model=4, n_layers=1, encoder_hidden=8,
    )  # fmt: skip
    spec = spec_for(pol)
    lib.add("plain", pol, spec, np.ones(3), source="test")
    lib.add_base("base", pol, spec)
    tuned = {k: v.clone() for k, v in pol.state_dict().items()}
    tuned["value.bias"] += 1
    lib.add("delta", tuned, spec, np.arange(1, 4), base="base")
    yield root / "lib"
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _copy(pristine: Path) -> Iterator[Path]:
    """A scratch copy of the pristine library, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="skills-case-"))
    try:
        shutil.copytree(pristine, root / "lib")
        yield root / "lib"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _exercise(path: Path, damaged: Path) -> None:
    """Every read operation either works or raises SkillLibraryError naming ``damaged``."""

    def check(fn):
        try:
            fn()
        except SkillNotFoundError:
            pass  # the damage renamed or dropped the entry: a legitimate answer
        except SkillLibraryError as e:
            msg = str(e)
            assert str(damaged) in msg or damaged.name in msg, msg
            assert e.path is None or e.path == damaged or e.path.parent.parent == damaged.parent
        # anything else propagates and fails the test

    lib = None

    def open_():
        nonlocal lib
        lib = SkillLibrary.open(path)

    check(open_)
    if lib is None:
        return
    for name in ["plain", "delta"]:
        check(lambda n=name: lib.get(n).act(np.zeros(3, np.float32)))
    check(lambda: lib.nearest(np.ones(3), k=2))
    check(lambda: lib.find(source="test"))
    check(lambda: lib.verify())
    check(lambda: lib.base_params("base"))


@FUZZ
@given(data=st.data())
def test_corrupted_manifest_bytes(pristine, data):
    with _copy(pristine) as path:
        manifest = path / "manifest.json"
        raw = bytearray(manifest.read_bytes())
        how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "empty"]))
        if how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif how == "flip":
            for _ in range(data.draw(st.integers(1, 8))):
                i = data.draw(st.integers(0, len(raw) - 1))
                raw[i] = data.draw(st.integers(0, 255))
        elif how == "garbage":
            raw = bytearray(data.draw(st.binary(max_size=200)))
        else:
            raw = bytearray()
        manifest.write_bytes(bytes(raw))
        _exercise(path, manifest)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(data=st.data())
def test_corrupted_manifest_values(pristine, data):
    """Replace or delete any value anywhere in the manifest's JSON tree."""
    with _copy(pristine) as path:
        manifest = path / "manifest.json"
        doc = json.loads(manifest.read_text())
        target = data.draw(st.sampled_from(list(_paths(doc))[1:]))
        mutated = copy.deepcopy(doc)
        parent = mutated
        for key in target[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[target[-1]]
        else:
            parent[target[-1]] = data.draw(JSON_VALUES)
        manifest.write_text(json.dumps(mutated))
        _exercise(path, manifest)


@FUZZ
@given(data=st.data(), fix_checksum=st.booleans())
def test_corrupted_tensor_files(pristine, data, fix_checksum):
    """Truncate or overwrite bytes of a tensor file; with ``fix_checksum`` the manifest is made to
    agree, so the safetensors parser and the shape checks see the damage."""
    with _copy(pristine) as path:
        doc = json.loads((path / "manifest.json").read_text())
        entries = [doc["skills"]["plain"], doc["skills"]["delta"], doc["bases"]["base"]]
        entry = data.draw(st.sampled_from(entries))
        target = path / entry["file"]
        raw = bytearray(target.read_bytes())
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:
            header = int.from_bytes(raw[:8], "little") + 8
            hi = data.draw(st.sampled_from([8, header, len(raw)]))  # length, header or anywhere
            for _ in range(data.draw(st.integers(1, 6))):
                raw[data.draw(st.integers(0, hi - 1))] = data.draw(st.integers(0, 255))
        target.write_bytes(bytes(raw))
        if fix_checksum:
            entry["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
            (path / "manifest.json").write_text(json.dumps(doc))
        _exercise(path, target)
