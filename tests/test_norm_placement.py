"""LayerNorm placement in the residual stack (a plasticity lever): pre (the default), post and
none, through the sequence-model contract and the versioned spec."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call, grad

from metarl.train_config import PolicyConfig
from ssm import PolicySpec, SequencePolicy

OBS = gym.spaces.Box(-1, 1, (3,), np.float32)
ACT = gym.spaces.Box(-1, 1, (2,), np.float32)


def policy(kind: str, norm: str) -> SequencePolicy:
    torch.manual_seed(0)
    return SequencePolicy(OBS, ACT, kind=kind, d_model=8, n_layers=2, encoder_hidden=8, norm=norm)


@pytest.mark.parametrize("kind", ["gru", "s4d", "mamba"])
@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_step_equals_sequence_with_resets(kind, norm):
    p = policy(kind, norm).double()
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    resets = torch.zeros(3, 7, dtype=torch.bool)
    resets[1, 3] = resets[2, 0] = True
    out, _ = p(x, resets=resets)
    state, steps = None, []
    for t in range(7):
        o, state = p.step(x[:, t], state, resets[:, t])
        steps.append(o.value)
    torch.testing.assert_close(torch.stack(steps, 1), out.value)


def test_placements_are_different_networks():
    x = torch.randn(2, 5, 3)
    values = {n: policy("s4d", n)(x)[0].value for n in ("pre", "post", "none")}
    assert not torch.allclose(values["pre"], values["post"])
    assert not torch.allclose(values["pre"], values["none"])
    names = [n for n, _ in policy("s4d", "none").named_parameters()]
    assert not any(n.startswith(("norms.", "final_norm.")) for n in names)
    # post: every block's output is normalised (zero mean, unit variance over features)
    p = policy("gru", "post")
    h = p.in_proj(p.encoder(x))
    from ssm.stack import residual_forward

    y, _ = residual_forward(p.layers, p.norms, h, placement="post")
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_spec_round_trip_bounds_and_torch_func(norm):
    p = policy("mamba", norm)
    spec = p.spec
    data = spec.to_json()
    assert ("norm" in data) == (norm != "pre")  # pre: the JSON every spec had before
    again = SequencePolicy.from_spec(PolicySpec.from_json(data))
    assert again.spec == spec
    assert spec.min_parameters <= sum(q.numel() for q in p.parameters())
    params = dict(p.named_parameters())
    x = torch.randn(2, 4, 3)

    def loss(ps):
        return functional_call(p, ps, (x,))[0].value.pow(2).mean()

    g = grad(loss)(params)
    assert all(torch.isfinite(v).all() for v in g.values())


def test_an_old_spec_without_the_key_is_pre_and_keeps_its_id():
    spec = policy("gru", "pre").spec
    data = spec.to_json()
    assert "norm" not in data and PolicySpec.from_json(data).norm == "pre"
    assert PolicySpec.from_json(data).spec_id() == spec.spec_id()
    with pytest.raises(ValueError, match="norm must be one of"):
        PolicySpec.from_json({**data, "norm": "middle"})


def test_the_config_builds_the_placement():
    built = PolicyConfig(kind="gru", d_model=8, n_layers=1, norm="post").build(OBS, ACT, False)
    assert built.spec.norm == "post"
