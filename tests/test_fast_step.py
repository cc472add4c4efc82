"""FusedPolicyStep / FusedLayerStep (ssm.fast_step): the fused C++ step equals the reference
``policy.step`` over sequences with resets, for every fused kind, space and head; in-place and
functional forms; parameter changes are seen; everything else falls back to ``policy.step``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from ssm import backend
from ssm.fast_step import FUSED_KINDS, FusedLayerStep, FusedPolicyStep

pytestmark = pytest.mark.skipif(
    backend.policy_step_ext() is None, reason="the fused policy step extension cannot be built"
)

NAV = (gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Box(-0.1, 0.1, (2,)))
SPACES = {
    "box/gaussian": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-2, 2, (2,)), "gaussian"),
    "box/tanh": (gym.spaces.Box(-1, 1, (3, 2)), gym.spaces.Box(-2, 2, (2,)), "tanh"),
    "box/discrete": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Discrete(3), "gaussian"),
    "discrete/multidiscrete": (
        gym.spaces.Discrete(7),
        gym.spaces.MultiDiscrete([2, 3]),
        "gaussian",
    ),
}


def make_policy(kind, spaces=None, in_context=False, d_model=16, dtype=torch.float32, **kw):
    obs_space, act_space, box_head = spaces or (*NAV, "gaussian")
    torch.manual_seed(0)
    layer_kwargs = {"d_state": 16} if kind == "mamba" else {"d_state": 8} if kind != "gru" else {}
    if kind == "lstm":
        layer_kwargs = {}
    policy = ssm.SequencePolicy(
        obs_space,
        act_space,
        kind=kind,
        d_model=d_model,
        n_layers=2,
        in_context=in_context,
        box_head=box_head,
        layer_kwargs=layer_kwargs,
        **kw,
    )
    with torch.no_grad():  # perturb every parameter: no symmetric or zero initialisations
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy.to(dtype)


def obs_of(space, B, gen, dtype):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (B,), generator=gen)
    return torch.randn(B, *space.shape, generator=gen).to(dtype)


def action_of(space, B, gen, dtype):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (B,), generator=gen)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return torch.stack([torch.randint(0, int(n), (B,), generator=gen) for n in space.nvec], -1)
    return (torch.rand(B, *space.shape, generator=gen) * 3.8 - 1.9).to(dtype)


def run_both(policy, fast, B, steps=12, spaces=None, in_context=False, inplace=False, seed=1):
    """Step the reference (autograd on: the pure torch path) and the fused step side by side;
    returns the largest absolute difference of outputs and states."""
    obs_space, act_space, _ = spaces or (*NAV, "gaussian")
    dtype = next(policy.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    ref_state = policy.initial_state(B)
    fast_state = policy.initial_state(B)
    err = 0.0
    for t in range(steps):
        obs = obs_of(obs_space, B, gen, dtype)
        reset = (torch.rand(B, generator=gen) < 0.3) if t % 4 == 3 else None
        ctx = {}
        if in_context:
            ctx = dict(
                prev_action=action_of(act_space, B, gen, dtype),
                prev_reward=torch.randn(B, generator=gen).to(dtype),
                prev_done=torch.rand(B, generator=gen) < 0.2,
            )
        with torch.enable_grad():
            ref_out, ref_state = policy.step(obs, ref_state, reset, **ctx)
        with torch.inference_mode():
            step = fast.step_ if inplace else fast.step
            out, new_state = step(obs, fast_state, reset, **ctx)
        if inplace:
            assert new_state is fast_state
        fast_state = new_state
        pairs = [(ref_out.dist_params, out.dist_params), (ref_out.value, out.value)]
        pairs += [(a, b) for ra, fa in zip(ref_state, fast_state) for a, b in zip(ra, fa)]
        for a, b in pairs:
            assert a.shape == b.shape and a.dtype == b.dtype
            err = max(err, (a.detach() - b).abs().max().item())
    return err


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("B", [1, 16])
def test_fused_policy_step_equals_policy_step_with_resets(kind, B):
    policy = make_policy(kind)
    fast = FusedPolicyStep(policy)
    assert fast.fused
    assert run_both(policy, fast, B) < 1e-5


@pytest.mark.parametrize("kind", ["s4d", "mamba"])
def test_in_place_step_equals_policy_step_and_reuses_the_state(kind):
    policy = make_policy(kind, d_model=64)
    fast = FusedPolicyStep(policy)
    assert run_both(policy, fast, 16, inplace=True) < 1e-5
    state = policy.initial_state(4)
    ptrs = [t.data_ptr() for layer in state for t in layer]
    versions = [t._version for layer in state for t in layer]
    with torch.no_grad():
        fast.step_(torch.randn(4, 2), state)
    assert [t.data_ptr() for layer in state for t in layer] == ptrs
    assert all(t._version > v for t, v in zip((t for layer in state for t in layer), versions))


def test_functional_step_leaves_the_state_passed_in_untouched():
    policy = make_policy("mamba")
    fast = FusedPolicyStep(policy)
    with torch.no_grad():
        _, state = fast.step(torch.randn(3, 2), policy.initial_state(3))
        before = [t.clone() for layer in state for t in layer]
        _, new = fast.step(torch.randn(3, 2), state, torch.tensor([True, False, True]))
    assert all(torch.equal(a, b) for a, b in zip(before, (t for layer in state for t in layer)))
    assert not torch.equal(new[1][1], state[1][1])


@pytest.mark.parametrize("kind", ["s4d", "mamba", "gru"])
@pytest.mark.parametrize("space", sorted(SPACES))
def test_every_space_and_head_with_in_context_inputs(kind, space):
    spaces = SPACES[space]
    policy = make_policy(kind, spaces, in_context=True)
    fast = FusedPolicyStep(policy)
    assert fast.fused
    assert run_both(policy, fast, 5, spaces=spaces, in_context=True) < 1e-5


def test_float64_and_a_condition():
    from ssm.spec import PolicySpec

    spec = PolicySpec.from_spaces(*NAV, kind="s5", d_model=16, n_layers=2, condition=[0.5, -1.0])
    torch.manual_seed(0)
    policy = ssm.SequencePolicy.from_spec(spec).double()
    fast = FusedPolicyStep(policy)
    assert fast.fused
    assert run_both(policy, fast, 4) < 1e-12


@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_fused_layer_step_equals_layer_step(kind):
    torch.manual_seed(0)
    layer = ssm.make_layer(kind, 32)
    fast = FusedLayerStep(layer)
    assert fast.fused
    gen = torch.Generator().manual_seed(0)
    s_ref, s_fast = layer.initial_state(16), layer.initial_state(16)
    for t in range(10):
        x = torch.randn(16, 32, generator=gen)
        reset = torch.rand(16, generator=gen) < 0.3 if t % 3 == 2 else None
        with torch.enable_grad():
            y_ref, s_ref = layer.step(x, s_ref, reset)
        with torch.no_grad():
            y, s_fast = fast.step_(x, s_fast, reset) if t % 2 else fast.step(x, s_fast, reset)
        assert (y_ref.detach() - y).abs().max() < 1e-5
        for a, b in zip(s_ref, s_fast):
            assert (a.detach() - b).abs().max() < 1e-5


def test_parameter_changes_are_seen_without_refresh():
    policy = make_policy("s4d")
    fast = FusedPolicyStep(policy)
    obs, state = torch.randn(4, 2), policy.initial_state(4)
    # an optimiser step (in place) on the parameters the fused step derives from
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    out, _ = policy.step(obs, state)
    (out.value.sum() + out.dist_params.sum()).backward()
    opt.step()
    with torch.no_grad():
        got, _ = fast.step(obs, state)
        want, _ = policy.step(obs, state)
    assert (got.value - want.value).abs().max() < 1e-5
    # load_state_dict copies in place
    other = make_policy("s4d")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    policy.load_state_dict(other.state_dict())
    with torch.no_grad():
        got, _ = fast.step(obs, state)
        want, _ = policy.step(obs, state)
    assert (got.dist_params - want.dist_params).abs().max() < 1e-5
    # .double() changes the parameters' dtype under the same objects: rebuilt on the fly
    policy.double()
    with torch.no_grad():
        got, _ = fast.step(obs.double(), policy.initial_state(4))
        want, _ = policy.step(obs.double(), policy.initial_state(4))
    assert got.value.dtype == torch.float64 and fast.fused
    assert (got.value - want.value).abs().max() < 1e-10


def test_replaced_parameter_objects_need_refresh():
    policy = make_policy("mamba")
    fast = FusedPolicyStep(policy)
    obs, state = torch.randn(2, 2), policy.initial_state(2)
    policy.value.weight = torch.nn.Parameter(policy.value.weight.detach() + 1.0)
    fast.refresh()
    with torch.no_grad():
        got, _ = fast.step(obs, state)
        want, _ = policy.step(obs, state)
    assert (got.value - want.value).abs().max() < 1e-5


def test_fallbacks_run_the_reference_step(caplog):
    policy = make_policy("mamba")
    fast = FusedPolicyStep(policy)
    obs, state = torch.randn(3, 2), policy.initial_state(3)
    # autograd recording: the reference runs, and its output carries a graph
    out, _ = fast.step(obs, state)
    assert out.value.requires_grad
    # inputs the kernel does not take: the reference's error
    with torch.no_grad(), pytest.raises(ValueError, match="obs must have shape"):
        fast.step(torch.randn(3, 5), state)
    with torch.no_grad(), pytest.raises(ValueError, match="reset"):
        fast.step(obs, state, reset=torch.zeros(3))
    # state None: the zero state, as policy.step
    with torch.no_grad():
        got, _ = fast.step(obs, None)
        want, _ = policy.step(obs, None)
    assert (got.value - want.value).abs().max() < 1e-5
    # unsupported kinds and encoders: not fused, same results
    for p in (
        make_policy("mamba2"),
        ssm.SequencePolicy(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), NAV[1], d_model=8),
    ):
        f = FusedPolicyStep(p)
        assert not f.fused and f.unsupported
        o = (
            torch.randn(2, 2)
            if p.kind == "mamba2"
            else torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
        )
        with torch.no_grad():
            got, _ = f.step(o, p.initial_state(2))
            want, _ = p.step(o, p.initial_state(2))
        assert torch.equal(got.value, want.value)
    with pytest.raises(ValueError, match="SequencePolicy"):
        FusedPolicyStep(ssm.make_layer("s4d", 8))


def test_disabled_extension_falls_back(monkeypatch):
    monkeypatch.setattr(backend, "policy_step_ext", lambda: None)
    policy = make_policy("s4d")
    fast = FusedPolicyStep(policy)
    assert not fast.fused and "not available" in fast.unsupported
    obs, state = torch.randn(2, 2), policy.initial_state(2)
    with torch.no_grad():
        got, new = fast.step_(obs, state)
        want, _ = policy.step(obs, policy.initial_state(2))
    assert new is state and torch.allclose(got.value, want.value)


@pytest.mark.parametrize("placement", ["pre", "post", "none"])
@pytest.mark.parametrize("kind", ["s4d", "mamba"])
def test_every_norm_placement(kind, placement):
    policy = make_policy(kind, norm=placement)
    fast = FusedPolicyStep(policy)
    assert fast.fused
    assert run_both(policy, fast, 5) < 1e-5
