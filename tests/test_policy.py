"""SequencePolicy: every space kind, step/sequence agreement, torch.func transforms, bad input."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

import ssm

SPACES = {
    "box-obs/discrete": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Discrete(3), "gaussian"),
    "box-obs/gaussian": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-2, 2, (2,)), "gaussian"),
    "box-obs/tanh": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-2, 2, (2,)), "tanh"),
    "discrete-obs/multidiscrete": (
        gym.spaces.Discrete(7),
        gym.spaces.MultiDiscrete([2, 3]),
        "gaussian",
    ),
    "image-obs/discrete": (
        gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
        gym.spaces.Discrete(4),
        "gaussian",
    ),
}


def make_obs(space, lead, gen):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, space.n, lead, generator=gen)
    if space.dtype == np.uint8:
        return torch.randint(0, 256, (*lead, *space.shape), dtype=torch.uint8, generator=gen)
    return torch.randn(*lead, *space.shape, dtype=torch.float64, generator=gen)


def make_action(space, lead, gen):
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, space.n, lead, generator=gen)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return torch.stack([torch.randint(0, int(n), lead, generator=gen) for n in space.nvec], -1)
    return torch.rand(*lead, *space.shape, dtype=torch.float64, generator=gen) * 3.8 - 1.9


def build(kind, spaces, in_context=True):
    obs_space, act_space, box_head = spaces
    torch.manual_seed(0)
    kw = {"d_state": 4} if kind in ("s4d", "s5", "mamba") else None
    return ssm.SequencePolicy(
        obs_space,
        act_space,
        kind=kind,
        d_model=8,
        n_layers=2,
        in_context=in_context,
        box_head=box_head,
        layer_kwargs=kw,
    ).double()


def batch(spaces, B=2, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs_space, act_space, _ = spaces
    return dict(
        obs=make_obs(obs_space, (B, L), g),
        action=make_action(act_space, (B, L), g),
        reward=torch.randn(B, L, dtype=torch.float64, generator=g),
        done=torch.rand(B, L, generator=g) < 0.2,
        resets=torch.rand(B, L, generator=g) < 0.25,
    )


@pytest.mark.parametrize("kind", sorted(ssm.KINDS))
@pytest.mark.parametrize("space", sorted(SPACES))
def test_policy_step_matches_sequence_for_every_space(kind, space):
    pol, d = build(kind, SPACES[space]), batch(SPACES[space])
    out, state = pol(d["obs"], None, d["resets"], d["action"], d["reward"], d["done"])
    s, steps = None, []
    for t in range(d["obs"].shape[1]):
        o, s = pol.step(
            d["obs"][:, t],
            s,
            d["resets"][:, t],
            d["action"][:, t],
            d["reward"][:, t],
            d["done"][:, t],
        )
        steps.append(o)
    torch.testing.assert_close(
        out.dist_params, torch.stack([o.dist_params for o in steps], 1), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(
        out.value, torch.stack([o.value for o in steps], 1), rtol=0, atol=1e-10
    )
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(s)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    lp, ent = pol.log_prob(out, d["action"]), pol.entropy(out)
    assert lp.shape == d["reward"].shape and torch.isfinite(lp).all()
    assert ent.shape == d["reward"].shape and torch.isfinite(ent).all()
    sample = pol.sample(out, torch.Generator().manual_seed(1))
    assert torch.isfinite(pol.log_prob(out, sample)).all()
    assert pol.mode(out).shape == sample.shape


@pytest.mark.parametrize("kind", ["mamba", "s4d", "s5", "gru"])
def test_policy_second_order_grad_and_vmap_over_parameter_sets(kind):
    spaces = SPACES["box-obs/discrete"]
    pol, d = build(kind, spaces), batch(spaces)
    args = (d["obs"], None, d["resets"], d["action"], d["reward"], d["done"])
    params = {k: v.detach() for k, v in pol.named_parameters()}

    def loss(p):
        out, _ = functional_call(pol, (p,), args)
        return -pol.log_prob(out, d["action"]).mean() + out.value.pow(2).mean()

    # grad(grad-norm) with torch.func equals double backward with torch.autograd.
    def grad_norm(p):
        return sum((g**2).sum() for g in grad(loss)(p).values())

    gg = grad(grad_norm)(params)
    leaves = [v.detach().requires_grad_() for v in params.values()]
    p2 = dict(zip(params, leaves))
    g1 = torch.autograd.grad(loss(p2), leaves, create_graph=True)
    gg_ref = torch.autograd.grad(sum((g**2).sum() for g in g1), leaves, allow_unused=True)
    for k, ref in zip(params, gg_ref):
        torch.testing.assert_close(
            gg[k], torch.zeros_like(gg[k]) if ref is None else ref, rtol=1e-7, atol=1e-9
        )

    pols = [copy.deepcopy(pol) for _ in range(4)]
    with torch.no_grad():
        for i, q in enumerate(pols):
            for v in q.parameters():
                v.add_(0.02 * i * torch.randn_like(v))
    stacked, _ = stack_module_state(pols)
    batched = vmap(lambda p: functional_call(pol, (p,), args)[0])(stacked)
    for i, q in enumerate(pols):
        ref = q(*args)[0]
        torch.testing.assert_close(batched.dist_params[i], ref.dist_params, rtol=0, atol=1e-10)
        torch.testing.assert_close(batched.value[i], ref.value, rtol=0, atol=1e-10)


def test_policy_reset_hides_the_past():
    spaces = SPACES["box-obs/gaussian"]
    pol, d = build("mamba", spaces, in_context=False), batch(spaces, B=1, L=8)
    resets = torch.zeros(1, 8, dtype=torch.bool)
    resets[0, 4] = True
    out1, _ = pol(d["obs"], None, resets)
    obs2 = d["obs"].clone()
    obs2[:, :4] += 1.0
    out2, _ = pol(obs2, None, resets)
    torch.testing.assert_close(out1.value[:, 4:], out2.value[:, 4:], rtol=0, atol=1e-12)
    assert (out1.value[:, :4] - out2.value[:, :4]).abs().max() > 1e-6


def test_policy_float32_follows_inputs():
    obs_space, act_space, _ = SPACES["box-obs/gaussian"]
    pol = ssm.SequencePolicy(obs_space, act_space, kind="s5", d_model=8, n_layers=1)
    out, _ = pol(torch.randn(2, 5, 5))
    assert out.dist_params.dtype == torch.float32 and out.value.shape == (2, 5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: p(torch.randn(2, 5)), r"obs must have shape \(B, L, 5\)"),
        (lambda p: p(torch.randn(2, 3, 4)), r"obs must have shape \(B, L, 5\)"),
        (lambda p: p(torch.ones(2, 3, 5, dtype=torch.int64)), "floating-point"),
        (
            lambda p: p(torch.randn(2, 3, 5), resets=torch.zeros(2, 4, dtype=torch.bool)),
            r"resets must have shape \(2, 3\)",
        ),
        (lambda p: p(torch.randn(2, 3, 5), state=p.initial_state(3)), "batch"),
        (lambda p: p.step(torch.randn(2, 5), None, reset=torch.zeros(2)), "torch.bool"),
    ],
)
def test_policy_bad_input_raises_clear_value_error(call, match):
    obs_space, act_space, _ = SPACES["box-obs/discrete"]
    pol = ssm.SequencePolicy(obs_space, act_space, kind="mamba", d_model=8, n_layers=1)
    with pytest.raises(ValueError, match=match):
        call(pol)


def test_in_context_policy_requires_previous_action_reward_done():
    obs_space, act_space, _ = SPACES["box-obs/discrete"]
    pol = ssm.SequencePolicy(
        obs_space, act_space, kind="s4d", d_model=8, n_layers=1, in_context=True
    )
    with pytest.raises(ValueError, match="prev_action, prev_reward and prev_done"):
        pol(torch.randn(2, 3, 5))


def test_unsupported_spaces_are_rejected():
    with pytest.raises(ValueError, match="unsupported action space"):
        ssm.SequencePolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="unknown sequence layer kind"):
        ssm.SequencePolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), kind="rwkv")
