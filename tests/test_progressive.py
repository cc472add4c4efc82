"""Progressive networks (ssm.progressive) and their plugin (continual.progressive)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from continual.config import SequenceConfig
from continual.learner import ContinualLearner
from continual.progressive import ProgressiveColumns
from continual.sequence import build_policy, prepare_curriculum, resume_sequence, run_sequence
from metarl.config import ConfigError, load_config
from metarl.plugins import StageEnd
from metarl.run_dir import RunDir
from ssm.policy import SequencePolicy
from ssm.progressive import ProgressivePolicy, ProgressiveSpec
from ssm.spec import PolicySpec

# 2 stages x 3 iterations of 4 envs x 20 steps; a tiny GRU (as tests/test_continual_learner.py)
TINY = [
    "curriculum=nav2d_quadrants",
    "max_stages=2",
    "stage_steps=240",
    "policy.kind=gru",
    "policy.d_model=8",
    "policy.n_layers=1",
    "policy.encoder_hidden=8",
    "policy.box_head=tanh",
    "ppo.num_envs=4",
    "ppo.num_steps=20",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "eval.every_iterations=2",
    "eval.episodes=1",
    "regularizer.kind=progressive",
    "run.checkpoint_every=0",
    "run.threads=1",
]


def tiny_config(*extra: str, root=None) -> SequenceConfig:
    overrides = [*TINY, *extra] + ([f"run.root={root}"] if root is not None else [])
    return load_config(SequenceConfig, None, overrides)


def column_spec(kind: str = "gru", n_layers: int = 2) -> PolicySpec:
    return PolicySpec(
        {"type": "box", "shape": [3]},
        {"type": "box", "shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0]},
        kind=kind,
        d_model=8,
        n_layers=n_layers,
        encoder_hidden=8,
        box_head="tanh",
    )


def make_net(kind: str = "gru", columns: int = 3, n_layers: int = 2) -> ProgressivePolicy:
    torch.manual_seed(0)
    return ProgressivePolicy(ProgressiveSpec(column_spec(kind, n_layers), columns, 6))


def test_column_zero_built_from_a_policy_gives_its_outputs_exactly():
    torch.manual_seed(0)
    base = SequencePolicy(spec=column_spec())
    net = ProgressivePolicy.from_policy(base, 3)
    x = torch.randn(2, 5, 3)
    a, _ = base(x)
    b, _ = net(x)
    assert torch.equal(a.dist_params, b.dist_params) and torch.equal(a.value, b.value)


@pytest.mark.parametrize("kind", ["gru", "s4d", "mamba"])
def test_step_mode_matches_sequence_mode_with_resets_for_every_active_column(kind):
    net = make_net(kind)
    B, L = 3, 7
    x = torch.randn(B, L, 3)
    resets = torch.zeros(B, L, dtype=torch.bool)
    resets[0, 4] = resets[2, 0] = True
    start = tuple(tuple(torch.randn_like(t) for t in s) for s in net.initial_state(B))
    assert len(start) == net.num_columns * net.n_layers  # the protocol: one state per layer
    for active in range(net.num_columns):
        net.set_active(active)
        out, final = net(x, start, resets)
        state, steps = start, []
        for t in range(L):
            o, state = net.step(x[:, t], state, resets[:, t])
            steps.append(o)
        torch.testing.assert_close(torch.stack([o.dist_params for o in steps], 1), out.dist_params)
        torch.testing.assert_close(torch.stack([o.value for o in steps], 1), out.value)
        for s_seq, s_step in zip(final, state):
            for a, b in zip(s_seq, s_step):
                torch.testing.assert_close(a, b)
        # a column after the active one keeps its state, zeroed where a reset happened
        idle = [i for i in range(len(start)) if i // net.n_layers > active]
        for i in idle:
            for a, s in zip(final[i], start[i]):
                assert torch.equal(a[1], s[1])  # rows 0 and 2 had a reset
                assert not a[[0, 2]].any()


def test_a_reset_starts_the_sequence_afresh():
    net = make_net()
    net.set_active(2)
    x = torch.randn(2, 6, 3)
    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[:, 3] = True
    out, _ = net(x, net.initial_state(2), resets)
    fresh, _ = net(x[:, 3:])
    torch.testing.assert_close(out.dist_params[:, 3:], fresh.dist_params)


def test_laterals_carry_the_earlier_columns_into_the_new_one():
    net = make_net()
    net.set_active(1)
    x = torch.randn(2, 4, 3)
    before, _ = net(x)
    with torch.no_grad():
        net.columns[0].encoder.net[0].weight.mul_(2.0)  # column 0 changes: column 1 sees it
    after, _ = net(x)
    assert not torch.allclose(before.dist_params, after.dist_params)
    net.set_active(0)
    a, _ = net(x)
    with torch.no_grad():  # a later column and its adapters never flow back
        net.columns[1].encoder.net[0].weight.mul_(2.0)
        net.laterals[0][0].up.weight.mul_(2.0)
    b, _ = net(x)
    assert torch.equal(a.dist_params, b.dist_params)


def test_gradient_reaches_the_new_column_and_its_laterals_only():
    net = make_net()
    plugin = ProgressiveColumns(net)
    plugin.end_stage(StageEnd(stage=0, params=dict(net.named_parameters()), policy=net))
    assert net.active_column == 1
    out, _ = net(torch.randn(2, 4, 3))
    (out.dist_params.sum() + out.value.sum()).backward()
    for name, p in net.named_parameters():
        column = net.column_of(name)
        if column == 1:
            assert p.grad is not None, name
        else:  # column 0 is frozen (no autograd), column 2 is not computed
            assert p.grad is None, name
    lateral = [n for n, p in net.named_parameters() if n.startswith("laterals.0.")]
    assert lateral and all(net.get_parameter(n).grad.abs().sum() > 0 for n in lateral)
    # the pure mask (a meta-learner's path) zeroes every other column's gradient
    grads = {n: torch.ones_like(p) for n, p in net.named_parameters()}
    masked = plugin.mask_gradients(grads)
    for name, g in masked.items():
        assert torch.all(g == (1.0 if net.column_of(name) == 1 else 0.0)), name


def test_functional_call_grad_twice_and_vmap():
    net = make_net()
    net.set_active(2)
    x = torch.randn(2, 4, 3)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}

    def loss(p, obs):
        out, _ = functional_call(net, p, (obs,))
        return (out.dist_params**2).sum() + out.value.sum()

    torch.testing.assert_close(loss(params, x), loss(dict(net.named_parameters()), x).detach())
    g = grad(loss)(params, x)
    # (the heads of earlier columns are unused: their gradient is zero)
    reference = torch.autograd.grad(
        loss(dict(net.named_parameters()), x), list(net.parameters()), allow_unused=True
    )
    for (name, p), r in zip(net.named_parameters(), reference):
        torch.testing.assert_close(g[name], torch.zeros_like(p) if r is None else r)
    name = "laterals.1.0.down.weight"
    hess = grad(lambda p: (grad(loss)(p, x)[name] ** 2).sum())(params)
    assert all(torch.isfinite(h).all() for h in hess.values()) and hess[name].abs().sum() > 0
    stacked = {n: torch.stack([p, p * 1.1]) for n, p in params.items()}
    batched = vmap(loss, in_dims=(0, None))(stacked, x)
    looped = [loss({n: p[i] for n, p in stacked.items()}, x) for i in range(2)]
    torch.testing.assert_close(batched, torch.stack(looped))


def build_learner(*extra: str) -> tuple[ContinualLearner, list]:
    cfg = tiny_config(*extra)
    curriculum = prepare_curriculum(cfg)
    built = curriculum.build()
    torch.manual_seed(0)
    learner = ContinualLearner(build_policy(cfg, built), cfg, built)
    return learner, curriculum.stages


def test_earlier_columns_stay_bit_identical_after_ppo_trains_the_next():
    learner, stages = build_learner()
    policy, plugin = learner.policy, learner.regularizer
    assert isinstance(policy, ProgressivePolicy) and isinstance(plugin, ProgressiveColumns)
    learner.set_tasks(list(stages[0].tasks), seed=0)
    for _ in range(3):
        learner.step()
    learner.end_stage()
    obs = torch.randn(4, 10, *policy.obs_shape, generator=torch.Generator().manual_seed(1))
    first = learner.evaluation_params(learner.plugins.evaluation_group(0))
    old, _ = functional_call(policy, first, (obs,))
    params0 = {n: p.detach().clone() for n, p in policy.named_parameters()}
    moments = learner.optimizer.state[policy.get_parameter("columns.0.value.weight")]
    assert moments["exp_avg"].abs().sum() > 0  # Adam still remembers stage 0
    learner.set_tasks(list(stages[1].tasks), seed=1)
    for _ in range(3):
        learner.step()
    again, _ = functional_call(
        policy, learner.evaluation_params(learner.plugins.evaluation_group(0)), (obs,)
    )
    assert torch.equal(old.dist_params, again.dist_params) and torch.equal(old.value, again.value)
    for name, p in policy.named_parameters():
        column = policy.column_of(name)
        if column == 0:
            assert torch.equal(p, params0[name]), name
    for prefix in ("columns.1.", "laterals.0."):
        changed = [
            not torch.equal(p, params0[n])
            for n, p in policy.named_parameters()
            if n.startswith(prefix)
        ]
        assert changed and any(changed), prefix
    # the guard: whatever steps a frozen parameter, after_step writes it back bit for bit
    with torch.no_grad():
        policy.get_parameter("columns.0.value.bias").add_(1.0)
    plugin.after_step(dict(policy.named_parameters()))
    assert torch.equal(
        policy.get_parameter("columns.0.value.bias"), params0["columns.0.value.bias"]
    )


def test_the_sequence_scores_a_finished_stage_with_its_own_frozen_column():
    result = run_sequence(tiny_config(), write=False)
    R = np.array(result.results["R"])
    assert R.shape == (2, 2) and np.all(np.isfinite(R))
    assert R[1, 0] == R[0, 0]  # the frozen column, the same eval seeds
    assert result.summary["forgetting"] == 0.0


def test_resume_at_a_stage_boundary_restores_the_frozen_columns(tmp_path):
    whole = run_sequence(tiny_config(root=tmp_path / "a"))
    part = run_sequence(tiny_config("run.stop_after=3", root=tmp_path / "b"))
    assert part.status == "stopped"
    resumed = resume_sequence(part.run.path, ["run.stop_after=null"])
    assert resumed.results["R"] == whole.results["R"]
    assert resumed.results["curves"] == whole.results["curves"]
    a = RunDir.open(whole.run.path).load_checkpoint()["trainer"]["learner"]
    b = RunDir.open(resumed.run.path).load_checkpoint()["trainer"]["learner"]
    for name, p in a["trainer"]["policy"].items():
        assert torch.equal(p, b["trainer"]["policy"][name]), name
    assert a["regularizer"]["frozen"] == b["regularizer"]["frozen"] == 2


def test_plugin_state_round_trips_and_refreezes():
    net = make_net()
    plugin = ProgressiveColumns(net)
    plugin.end_stage(StageEnd(stage=0, params=dict(net.named_parameters()), policy=net))
    state = plugin.state_dict()
    fresh = copy.deepcopy(make_net())
    fresh.load_state_dict(net.state_dict())
    other = ProgressiveColumns(fresh)
    other.load_state_dict(state)
    assert fresh.active_column == 1 and other.frozen == 1
    assert all(p.requires_grad == (fresh.column_of(n) != 0) for n, p in fresh.named_parameters())
    with pytest.raises(ValueError, match="3 columns"):
        ProgressiveColumns(make_net(columns=2)).load_state_dict(state)


def test_spec_round_trips_through_json():
    net = make_net()
    net.set_active(2)
    spec = ProgressiveSpec.from_json(json.loads(json.dumps(net.spec.to_json())))
    twin = ProgressivePolicy.from_spec(spec)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 3)
    assert twin.active_column == 2 and torch.equal(twin(x)[0].dist_params, net(x)[0].dist_params)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ProgressiveSpec(column_spec(), 0, 8), "columns must be an int in"),
        (lambda: ProgressiveSpec.from_json({"columns": 2}), "ProgressiveSpec keys must be"),
        (lambda: make_net().set_active(3), r"column must be in \[0, 2\]"),
        (lambda: make_net()(torch.randn(2, 3, 3), state=()), "tuple of 6 layer states"),
        (lambda: ProgressiveColumns(SequencePolicy(spec=column_spec())), "ProgressivePolicy"),
        (lambda: tiny_config("boundaries=hidden", "drift.enabled=true"), "boundaries=known"),
        (lambda: tiny_config("regularizer.lateral_width=0"), "lateral_width"),
    ],
)
def test_bad_input_gives_a_one_line_error(build, message):
    with pytest.raises((ValueError, ConfigError), match=message) as info:
        build()
    assert "\n" not in str(info.value)


def test_more_stages_than_columns_is_refused():
    net = make_net(columns=1)
    plugin = ProgressiveColumns(net)
    end = StageEnd(stage=0, params=dict(net.named_parameters()), policy=net)
    plugin.end_stage(end)
    with pytest.raises(ValueError, match="one column per stage"):
        plugin.end_stage(StageEnd(stage=1, params=end.params, policy=net))


def test_after_the_last_stage_every_gradient_is_masked_and_every_column_kept():
    net = make_net(columns=2)
    plugin = ProgressiveColumns(net)
    for stage in range(2):
        plugin.end_stage(StageEnd(stage=stage, params=dict(net.named_parameters()), policy=net))
    assert net.active_column == 1 and plugin.frozen == 2
    masked = plugin.mask_gradients({n: torch.ones_like(p) for n, p in net.named_parameters()})
    assert not any(g.any() for g in masked.values())
    # the last column stays trainable for autograd (an adapted evaluation adapts it) but fixed
    assert all(p.requires_grad == (net.column_of(n) == 1) for n, p in net.named_parameters())
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    plugin.after_step(dict(net.named_parameters()))
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())


def test_a_maml_sequence_trains_and_adapts_with_progressive_columns():
    meta = ["learner=maml", "stage_steps=320", "meta.meta_batch_size=2"]
    meta += ["meta.episodes_per_task=2", "meta.inner_steps=1", "meta.outer_lr=0.01"]
    result = run_sequence(tiny_config(*meta), write=False)
    R, R_adapt = np.array(result.results["R"]), np.array(result.results["R_adapt"])
    assert R[1, 0] == R[0, 0] and R_adapt.shape == (2, 2) and np.all(np.isfinite(R_adapt))
