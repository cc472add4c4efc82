"""A skill's network is ``ssm.SequencePolicy.from_spec``; the library's builder checks the spec
first (size, RNG) and reports problems as ``SkillLibraryError``. The equivalence of a policy and
the network rebuilt from its spec is pinned in ``tests/test_policy_spec.py``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from skills import ArchSpec, SkillLibrary, SkillLibraryError, SkillNetwork
from skills.extract import spec_for
from skills.network import build_network, parameter_shapes

BOX = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _policy(kind="gru", **kw) -> ssm.SequencePolicy:
    torch.manual_seed(0)
    layer_kwargs = {"d_state": 4} if kind in ("s4d", "s5", "mamba") else None
    return ssm.SequencePolicy(
        BOX, ACT, kind=kind, d_model=8, n_layers=2, encoder_hidden=16, layer_kwargs=layer_kwargs,
        **kw,
    )  # fmt: skip


def test_the_skill_network_is_the_policy_built_from_its_spec():
    pol = _policy("mamba")
    spec = spec_for(pol)
    assert ArchSpec is ssm.PolicySpec and SkillNetwork is ssm.SequencePolicy
    assert spec == pol.spec
    net = build_network(spec)
    assert type(net) is ssm.SequencePolicy and net.spec == spec
    net.load_state_dict(pol.state_dict(), strict=True)


def test_float64_policies_keep_their_dtype():
    pol = _policy().double()
    spec = spec_for(pol)
    assert spec.dtype == "float64"
    assert next(build_network(spec).parameters()).dtype == torch.float64


def test_params_that_do_not_fit_the_policy_are_caught():
    pol = _policy("mamba")
    bad = {"value.weight": torch.zeros(1, 9)}
    with pytest.raises(SkillLibraryError, match="do not fit its spec"):
        spec_for(pol, bad)
    with pytest.raises(SkillLibraryError, match="needs an ssm.SequencePolicy"):
        spec_for(torch.nn.Linear(2, 2))


def test_a_bad_spec_in_a_manifest_is_a_library_error_naming_the_manifest(tmp_path):
    pol = _policy()
    lib = SkillLibrary.create(tmp_path / "lib")
    lib.add("s", pol, spec_for(pol), np.ones(2))
    manifest = lib.manifest_path
    raw = manifest.read_text()
    assert '"kind":"gru"' in raw
    manifest.write_text(raw.replace('"kind":"gru"', '"kind":"rnn"'))
    reopened = SkillLibrary.open(tmp_path / "lib")
    with pytest.raises(SkillLibraryError, match="unknown sequence layer kind 'rnn'") as err:
        reopened.get("s")
    assert str(manifest) in str(err.value)


def test_oversized_spec_is_refused_before_any_allocation():
    spec = ArchSpec(
        {"type": "box", "shape": [4]}, {"type": "discrete", "n": 2}, kind="gru",
        d_model=60_000, encoder_hidden=60_000, n_layers=4,
    )  # fmt: skip
    with pytest.raises(SkillLibraryError, match="more than the limit"):
        parameter_shapes(spec)


def test_building_a_network_leaves_the_global_rng_alone():
    spec = spec_for(_policy("s5"))
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    build_network(spec)
    assert torch.equal(torch.rand(3), want)
