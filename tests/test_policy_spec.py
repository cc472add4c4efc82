"""``PolicySpec``: JSON round trip, one-line errors for bad specs, and ``from_spec(policy.spec)``
rebuilding every policy exactly (same state-dict names, same outputs in both modes)."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from ssm.spec import PolicySpec

SMALL = {"s4d": {"d_state": 4}, "s5": {"d_state": 4}, "mamba": {"d_state": 4, "d_conv": 3}}
BOX = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _policy(obs_space, act_space, kind="gru", **kw) -> ssm.SequencePolicy:
    torch.manual_seed(0)
    pol = ssm.SequencePolicy(
        obs_space, act_space, kind=kind, d_model=8, n_layers=2, encoder_hidden=16,
        layer_kwargs=SMALL.get(kind), **kw,
    )  # fmt: skip
    with torch.no_grad():  # move off the structured initialisation
        for p in pol.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pol


def _rebuilt(pol: ssm.SequencePolicy) -> ssm.SequencePolicy:
    spec = PolicySpec.from_json(json.loads(json.dumps(pol.spec.to_json())))  # through JSON text
    net = ssm.SequencePolicy.from_spec(spec)
    net.load_state_dict(pol.state_dict(), strict=True)
    return net


def _obs(space, shape, gen):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), shape, generator=gen)
    if space.dtype == np.uint8:
        return torch.randint(0, 256, (*shape, *space.shape), generator=gen, dtype=torch.uint8)
    return torch.randn((*shape, *space.shape), generator=gen)


def _actions(space, shape, gen):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), shape, generator=gen)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return torch.stack([torch.randint(0, int(n), shape, generator=gen) for n in space.nvec], -1)
    return torch.randn((*shape, *space.shape), generator=gen)


def _assert_same(pol, net, obs_space, act_space, in_context=False):
    gen = torch.Generator().manual_seed(1)
    B, L = 3, 5
    obs = _obs(obs_space, (B, L), gen)
    resets = torch.zeros(B, L, dtype=torch.bool)
    resets[0, 2] = True
    ctx = {}
    if in_context:
        ctx = {
            "prev_action": _actions(act_space, (B, L), gen),
            "prev_reward": torch.randn(B, L, generator=gen),
            "prev_done": torch.rand(B, L, generator=gen) < 0.3,
        }
    with torch.no_grad():
        want, _ = pol(obs, None, resets, **ctx)
        got, _ = net(obs, None, resets, **ctx)
        assert torch.equal(want.dist_params, got.dist_params)
        assert torch.equal(want.value, got.value)
        s_pol, s_net = pol.initial_state(B), net.initial_state(B)
        for t in range(L):
            step_ctx = {k: v[:, t] for k, v in ctx.items()}
            w, s_pol = pol.step(obs[:, t], s_pol, resets[:, t], **step_ctx)
            g, s_net = net.step(obs[:, t], s_net, resets[:, t], **step_ctx)
            assert torch.equal(w.dist_params, g.dist_params)
            assert torch.equal(w.value, g.value)
            assert torch.equal(pol.mode(w), net.mode(g))


@pytest.mark.parametrize("kind", sorted(ssm.KINDS))
def test_every_layer_kind_rebuilds_identically_from_its_spec(kind):
    pol = _policy(BOX, ACT, kind)
    net = _rebuilt(pol)
    assert list(net.state_dict()) == list(pol.state_dict())
    assert net.spec == pol.spec
    _assert_same(pol, net, BOX, ACT)


@pytest.mark.parametrize(
    "obs_space,act_space,kw",
    [
        (BOX, ACT, {"box_head": "tanh"}),
        (BOX, gym.spaces.Discrete(5), {}),
        (BOX, gym.spaces.MultiDiscrete([3, 4]), {}),
        (gym.spaces.Discrete(6), gym.spaces.Discrete(3), {}),
        (gym.spaces.Box(0, 255, (36, 36, 3), np.uint8), gym.spaces.Discrete(4), {}),
        (BOX, ACT, {"in_context": True}),
        (BOX, gym.spaces.Discrete(4), {"in_context": True}),
        (BOX, gym.spaces.MultiDiscrete([2, 3]), {"in_context": True}),
    ],
    ids=[
        "tanh", "discrete", "multidiscrete", "discrete-obs", "image", "rl2-box", "rl2-discrete",
        "rl2-multidiscrete",
    ],
)  # fmt: skip
def test_every_space_and_head_rebuilds_identically_from_its_spec(obs_space, act_space, kw):
    pol = _policy(obs_space, act_space, **kw)
    net = _rebuilt(pol)
    assert list(net.state_dict()) == list(pol.state_dict())
    _assert_same(pol, net, obs_space, act_space, in_context=kw.get("in_context", False))


def test_the_spec_keeps_the_state_dict_names_of_checkpoints():
    pol = _policy(gym.spaces.Box(0, 255, (36, 36, 3), np.uint8), gym.spaces.Discrete(4))
    names = set(pol.state_dict())
    for name in ("encoder.conv.0.weight", "encoder.out.weight", "in_proj.weight",
                 "layers.1.weight_ih", "norms.0.weight", "norms.1.bias", "final_norm.weight",
                 "head.linear.weight", "value.weight"):  # fmt: skip
        assert name in names
    assert "encoder.net.0.weight" in _policy(BOX, ACT).state_dict()


def test_the_spec_follows_the_parameter_dtype():
    pol = _policy(BOX, ACT).double()
    assert pol.spec.dtype == "float64"
    net = _rebuilt(pol)
    assert next(net.parameters()).dtype == torch.float64
    obs = torch.randn(2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(pol(obs)[0].dist_params, net(obs)[0].dist_params)


def test_spec_json_round_trip_is_exact():
    low, high = np.array([-1, -np.inf], np.float32), np.array([2.5, np.inf], np.float32)
    spec = PolicySpec.from_spaces(
        gym.spaces.Box(-1, 1, (4,), np.float32),
        gym.spaces.Box(low, high, (2,), np.float32),
        kind="mamba", d_model=16, n_layers=3, in_context=True, box_head="gaussian",
        encoder_hidden=32, layer_kwargs={"d_state": 8, "backend": "torch"}, dtype="float64",
    )  # fmt: skip
    text = json.dumps(spec.to_json(), allow_nan=False)
    back = PolicySpec.from_json(json.loads(text))
    assert back == spec and back.spec_id() == spec.spec_id()
    assert back.action["low"] == [-1.0, "-inf"] and back.action["high"] == [2.5, "inf"]
    cond = spec.with_condition([0.0, 1.0])
    assert cond.condition == (0.0, 1.0) and PolicySpec.from_json(cond.to_json()) == cond
    assert spec.obs_shape == (4,) and spec.action_shape == (2,) and spec.prev_action_dim == 2


def test_the_spaces_come_back_as_gymnasium_spaces():
    pol = _policy(BOX, gym.spaces.MultiDiscrete([3, 4]))
    assert pol.action_space == gym.spaces.MultiDiscrete([3, 4])
    assert pol.observation_space.shape == (3,)
    act = _policy(BOX, ACT).action_space
    assert np.array_equal(act.low, ACT.low) and np.array_equal(act.high, ACT.high)


GOOD = {"observation": {"type": "box", "shape": [2]}, "action": {"type": "discrete", "n": 2}}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"kind": "rnn"}, "unknown sequence layer kind 'rnn'"),
        ({"d_model": 0}, r"d_model must be an int in \[1, 65536\]"),
        ({"n_layers": 10_000}, r"n_layers must be an int in \[1, 256\]"),
        ({"in_context": 1}, "in_context must be a bool"),
        ({"box_head": "beta"}, "box_head must be one of"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"network": "ssm.SequencePolicy/9"}, "network must be one of"),
        ({"condition": ["a"]}, "condition must be a list of numbers"),
        ({"condition": [float("nan")]}, "condition must be finite"),
        ({"layer_kwargs": {"d_state": [4]}}, r"layer_kwargs\['d_state'\] must be"),
        ({"layer_kwargs": {"d_state": 1e300}}, r"within ±65536"),
        ({"observation": {"type": "multidiscrete", "nvec": [2]}}, "observation space type"),
        ({"observation": {"type": "box", "shape": [1 << 13, 1 << 13]}}, "more than"),
        ({"action": {"type": "box", "shape": [1], "low": [1], "high": [0]}}, "low must not"),
        ({"action": {"type": "discrete", "n": 2, "m": 3}}, "unknown key"),
        (
            {
                "observation": {"type": "box", "shape": [64, 64, 3], "dtype": "uint8"},
                "condition": [1.0],
            },
            "condition is only supported",
        ),  # fmt: skip
    ],
)
def test_bad_specs_give_one_line_value_errors(change, match):
    with pytest.raises(ValueError, match=match) as err:
        PolicySpec(**{**GOOD, **change})
    assert "\n" not in str(err.value)


def test_from_json_rejects_unknown_and_missing_keys():
    full = PolicySpec(**GOOD).to_json()
    with pytest.raises(ValueError, match=r"unknown PolicySpec key\(s\) \['colour'\]"):
        PolicySpec.from_json({**full, "colour": 1})
    partial = {k: v for k, v in full.items() if k != "kind"}
    with pytest.raises(ValueError, match=r"misses key\(s\) \['kind'\]"):
        PolicySpec.from_json(partial)
    with pytest.raises(ValueError, match="must be a JSON object"):
        PolicySpec.from_json([1, 2])


def test_a_version_1_spec_as_skill_libraries_store_it_still_parses():
    stored = {
        "observation": {"type": "box", "shape": [3], "dtype": "float32"},
        "action": {"type": "box", "shape": [2], "dtype": "float32", "low": [-1.0, -1.0],
                   "high": [1.0, 1.0]},
        "kind": "mamba", "d_model": 8, "n_layers": 2, "in_context": False,
        "box_head": "gaussian", "encoder_hidden": 16,
        "layer_kwargs": {"d_state": 4, "d_conv": 3, "expand": 2, "dt_rank": 1, "bias": False,
                         "conv_bias": True, "backend": "auto"},
        "condition": [], "dtype": "float32", "network": "ssm.SequencePolicy/1",
    }  # fmt: skip
    net = ssm.SequencePolicy.from_spec(PolicySpec.from_json(stored))
    assert net.layers[0].dt_rank == 1 and net.spec.to_json() == stored


def test_a_conditioned_policy_folds_its_code_into_the_encoder_bias():
    spec = _policy(BOX, ACT).spec.with_condition([0.0, 1.0, 0.0])
    cond = ssm.SequencePolicy.from_spec(spec)
    plain = ssm.SequencePolicy.from_spec(PolicySpec.from_json({**spec.to_json(), "condition": []}))
    plain.load_state_dict(cond.unconditioned_state_dict(), strict=True)
    obs = torch.randn(2, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(cond(obs)[0].dist_params, plain(obs)[0].dist_params)


def test_policy_and_skill_runtime_import_without_gymnasium():
    code = (
        "import sys, ssm, skills\n"
        "ssm.SequencePolicy, ssm.PolicySpec, skills.SkillLibrary, skills.ArchSpec\n"
        "from ssm import SequencePolicy\n"
        "assert 'gymnasium' not in sys.modules, 'gymnasium was imported'\n"
        "spec = ssm.PolicySpec({'type': 'box', 'shape': [3]}, {'type': 'discrete', 'n': 2},\n"
        "                      kind='gru', d_model=4, n_layers=1)\n"
        "SequencePolicy.from_spec(spec).step(__import__('torch').zeros(1, 3), None)\n"
        "assert 'gymnasium' not in sys.modules, 'gymnasium was imported by from_spec'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
