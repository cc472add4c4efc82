"""Bad input to the meta-learners raises a clear ValueError; nothing fails silently."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from metarl.meta import IMAML, MAML, MetaConfig, Reptile, task_batches
from metarl.meta.batch import select_task
from metarl.meta.learners import second_order_error
from metarl.meta.testing import tiny_meta_batch, tiny_policy


@pytest.fixture(scope="module")
def policy():
    return tiny_policy("gru", max_episode_steps=5)[0]


@pytest.mark.parametrize("cls", [MAML, IMAML, Reptile])
@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan")])
def test_non_positive_inner_lr_is_rejected(policy, cls, lr):
    with pytest.raises(ValueError, match="inner_lr must be a number > 0"):
        cls(policy, inner_lr=lr)


@pytest.mark.parametrize("cls", [MAML, IMAML, Reptile])
@pytest.mark.parametrize("steps", [0, -1, 1.5])
def test_inner_steps_must_be_a_positive_int(policy, cls, steps):
    with pytest.raises(ValueError, match="inner_steps must be an int >= 1"):
        cls(policy, inner_lr=0.1, inner_steps=steps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inner_lr": 0}, "inner_lr must be > 0"),
        ({"inner_steps": 0}, "inner_steps must be >= 1"),
        ({"algo": "protomaml"}, "algo must be one of"),
        ({"outer": "lbfgs"}, "outer must be one of"),
        ({"algo": "imaml", "outer": "trpo"}, "not defined for algo='imaml'"),
        ({"algo": "reptile", "lr_mode": "lslr"}, "need algo maml/fomaml"),
        ({"algo": "imaml", "multi_step_loss": True}, "multi_step_loss needs"),
        ({"algo": "imaml", "resample_support": True}, "one fixed proximal problem"),
        ({"imaml_lambda": 0}, "imaml_lambda must be > 0"),
        ({"max_kl": 0}, "max_kl must be > 0"),
        ({"backtrack_ratio": 1.0}, "backtrack_ratio"),
        ({"meta_batch_size": 0}, "meta_batch_size"),
    ],
)
def test_meta_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetaConfig(**kwargs)


def test_learner_options_are_checked(policy):
    with pytest.raises(ValueError, match="lr_mode"):
        MAML(policy, lr_mode="adaptive")
    with pytest.raises(ValueError, match="inner_objective"):
        MAML(policy, inner_objective="dice")
    with pytest.raises(ValueError, match="outer_objective"):
        MAML(policy, outer_objective="a2c")
    with pytest.raises(ValueError, match="baseline"):
        MAML(policy, baseline="zero")
    with pytest.raises(ValueError, match="λ > 0"):
        IMAML(policy, lam=0.0)
    with pytest.raises(ValueError, match="diverges"):
        IMAML(policy, inner_lr=0.5, lam=10.0)
    with pytest.raises(ValueError, match="nn.Module"):
        MAML(lambda x: x)


class _OnceDifferentiableTanh(torch.autograd.Function):
    """A layer whose backward cannot itself be differentiated: torch.func gives *no* error for
    second derivatives through it, just a silently missing term."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _OnceTanh(nn.Module):
    def forward(self, x):
        return _OnceDifferentiableTanh.apply(x)


def test_a_policy_without_second_derivatives_is_caught_before_a_silent_wrong_meta_gradient():
    policy, family = tiny_policy("gru", max_episode_steps=5)
    policy.encoder.net[1] = _OnceTanh()
    learner = MAML(policy, inner_lr=0.3)
    sup, qry = tiny_meta_batch(learner, family, n_tasks=2)
    with pytest.raises(ValueError, match="second derivatives are wrong.*first_order=True"):
        learner.meta_gradient(sup, qry)
    # first order needs no second derivatives, and works
    mg = learner.meta_gradient(sup, qry, first_order=True)
    assert all(torch.isfinite(g).all() for g in mg.grads.values())
    # and a healthy policy passes the probe with float64 accuracy
    healthy, _ = tiny_policy("mamba", max_episode_steps=5)
    good = MAML(healthy, inner_lr=0.3)
    s2, _ = tiny_meta_batch(good, family, n_tasks=2)
    assert second_order_error(healthy, good.params(), select_task(s2, 0)) < 1e-6
    assert second_order_error(healthy, good.params(), select_task(s2, 0), "lvc", True) < 1e-6


def test_bad_batches_are_rejected(policy):
    _, family = tiny_policy("gru", max_episode_steps=5)
    learner = MAML(policy, inner_lr=0.1, inner_steps=2)
    sup, _ = tiny_meta_batch(learner, family, n_tasks=2)
    with pytest.raises(ValueError, match="cannot be split into 4 tasks"):
        task_batches(_flat_traj(learner, family), 4)
    with pytest.raises(ValueError, match="needs a support batch"):
        learner.adapt(None, [select_task(sup, 0)], steps=2)  # per-step supports: one missing
    one_sample = _flat_traj(learner, family, envs=1, steps=1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        task_batches(one_sample, 1)


def _flat_traj(learner, family, envs: int = 3, steps: int = 5):
    from metarl.meta import collect_tasks

    return collect_tasks(learner.policy, family, family.sample(1), envs, steps, seed=0)


class _NoVmap(nn.Module):
    """Calls ``.item()``, which ``vmap`` cannot batch."""

    def forward(self, x):
        return x * (1.0 + 0.0 * float(x.detach().abs().sum().item()))


def test_a_failing_vmap_falls_back_to_the_loop_with_a_warning(caplog):
    policy, family = tiny_policy("gru", max_episode_steps=5)
    policy.encoder.net[1] = nn.Sequential(nn.Tanh(), _NoVmap())
    learner = MAML(policy, inner_lr=0.3, vectorize=False)
    sup, qry = tiny_meta_batch(learner, family, n_tasks=2)
    looped = learner.meta_gradient(sup, qry, first_order=True).grads
    learner.vectorize = True
    with caplog.at_level("WARNING", logger="metarl.meta"):
        fallback = learner.meta_gradient(sup, qry, first_order=True)
    assert not learner.vectorize
    assert any("falling back to a Python loop" in r.message for r in caplog.records)
    for k in looped:
        torch.testing.assert_close(fallback.grads[k], looped[k])


def test_trpo_with_learned_inner_rates_is_rejected():
    with pytest.raises(ValueError, match="learned inner learning rates"):
        MetaConfig(outer="trpo", lr_mode="lslr")
