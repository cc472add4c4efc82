"""``SkillNetwork`` rebuilds ``ssm.SequencePolicy`` from JSON: same state-dict keys and outputs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from skills import ArchSpec, SkillLibraryError
from skills.extract import spec_for
from skills.network import build_network, parameter_shapes

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


def _rebuilt(pol: ssm.SequencePolicy):
    spec = ArchSpec.from_json(spec_for(pol).to_json())  # through JSON
    net = build_network(spec)
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
        want, ws = pol(obs, None, resets, **ctx)
        got, gs = net(obs, None, resets, **ctx)
        assert torch.equal(want.dist_params, got.dist_params)
        assert torch.equal(want.value, got.value)
        s_pol, s_net = pol.initial_state(B), net.initial_state(B)
        for t in range(L):
            step_ctx = {k: v[:, t] for k, v in ctx.items()}
            w, s_pol = pol.step(obs[:, t], s_pol, resets[:, t], **step_ctx)
            g, s_net = net.step(obs[:, t], s_net, resets[:, t], **step_ctx)
            assert torch.equal(w.dist_params, g.dist_params)
            assert torch.equal(pol.mode(w), net.mode(g))


@pytest.mark.parametrize("kind", sorted(ssm.KINDS))
def test_every_layer_kind_rebuilds_identically(kind):
    pol = _policy(BOX, ACT, kind)
    net = _rebuilt(pol)
    assert list(net.state_dict()) == list(pol.state_dict())
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
    ],
    ids=["tanh", "discrete", "multidiscrete", "discrete-obs", "image", "rl2-box", "rl2-discrete"],
)
def test_every_space_and_head_rebuilds_identically(obs_space, act_space, kw):
    pol = _policy(obs_space, act_space, **kw)
    net = _rebuilt(pol)
    _assert_same(pol, net, obs_space, act_space, in_context=kw.get("in_context", False))


def test_float64_policies_keep_their_dtype():
    pol = _policy(BOX, ACT).double()
    spec = spec_for(pol)
    assert spec.dtype == "float64"
    net = _rebuilt(pol)
    assert next(net.parameters()).dtype == torch.float64


def test_spec_with_wrong_layer_kwargs_is_caught_by_the_probe():
    pol = _policy(BOX, ACT, "mamba")
    with pytest.raises(SkillLibraryError, match="does not fit"):
        spec_for(pol, layer_kwargs={"d_state": 8})


def test_spec_validation_names_the_problem():
    with pytest.raises(SkillLibraryError, match="kind must be one of"):
        ArchSpec({"type": "box", "shape": [2]}, {"type": "discrete", "n": 2}, kind="rnn")
    with pytest.raises(SkillLibraryError, match="unknown ArchSpec key"):
        ArchSpec.from_json({"observation": {}, "action": {}, "colour": 1})
    with pytest.raises(SkillLibraryError, match="observation space type"):
        ArchSpec({"type": "multidiscrete", "nvec": [2]}, {"type": "discrete", "n": 2})


def test_oversized_spec_is_refused_before_any_allocation():
    spec = ArchSpec(
        {"type": "box", "shape": [4]}, {"type": "discrete", "n": 2}, kind="gru",
        d_model=60_000, encoder_hidden=60_000, n_layers=4,
    )  # fmt: skip
    with pytest.raises(SkillLibraryError, match="more than the limit"):
        parameter_shapes(spec)


def test_building_a_network_leaves_the_global_rng_alone():
    spec = spec_for(_policy(BOX, ACT, "s5"))
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    build_network(spec)
    assert torch.equal(torch.rand(3), want)
