"""Plasticity metrics and remedies (continual.plasticity_metrics, continual.plasticity)."""

from __future__ import annotations

import io
import json
import math

import gymnasium as gym
import pytest
import torch

import ssm
from continual.learner import ContinualLearner
from continual.plasticity import (
    ContinualBackprop,
    L2Init,
    ReDo,
    ResetModules,
    ShrinkPerturb,
    fresh_parameters,
)
from continual.plasticity_metrics import (
    PlasticityMetrics,
    active_fraction,
    dormant_mask,
    effective_rank,
    policy_units,
    probe_activations,
    relative_change,
    srank,
    stable_rank,
    unit_scores,
    weight_magnitude,
)
from continual.sequence import build_policy, prepare_curriculum, run_sequence
from metarl.config import load_config
from metarl.meta import MetaTrainer
from metarl.objectives import policy_evaluate
from metarl.plugins import StageEnd
from metarl.ppo import PPOTrainer
from metarl.trajectory import Trajectory

OBS, ACT = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3)
KINDS = ("s4d", "s5", "mamba", "gru", "lstm")


def make_policy(kind: str = "gru", seed: int = 0, **kw) -> ssm.SequencePolicy:
    torch.manual_seed(seed)
    args = dict(kind=kind, d_model=4, n_layers=1, in_context=True, encoder_hidden=8) | kw
    return ssm.SequencePolicy(OBS, ACT, **args).double()


def make_traj(policy: ssm.SequencePolicy, T: int = 6, B: int = 3, seed: int = 0) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0] = True
    resets[T // 2, 1] = True
    zeros = torch.zeros(T, B, dtype=torch.float64)
    return Trajectory(
        obs=torch.randn(T, B, 3, generator=g, dtype=torch.float64),
        actions=torch.randint(0, 3, (T, B), generator=g),
        rewards=zeros,
        terminated=resets.roll(-1, 0),
        truncated=torch.zeros(T, B, dtype=torch.bool),
        log_probs=zeros,
        values=zeros,
        dist_params=torch.zeros(T, B, 3, dtype=torch.float64),
        success=zeros,
        resets=resets,
        prev_actions=torch.randint(0, 3, (T, B), generator=g),
        prev_rewards=torch.randn(T, B, generator=g, dtype=torch.float64),
        prev_dones=resets.clone(),
        trial_ends=resets.roll(-1, 0),
        bootstrap_values=zeros,
        last_value=torch.zeros(B, dtype=torch.float64),
        start_returns=torch.zeros(B, dtype=torch.float64),
        task_ids=torch.zeros(B, dtype=torch.int64),
        initial_state=policy.initial_state(B, dtype=torch.float64),
    )


def params_of(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def assert_params(module, expected: dict[str, torch.Tensor]) -> None:
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=0, atol=0, msg=n)


def encoder_hidden(policy, traj: Trajectory) -> torch.Tensor:
    """tanh(W0 o + b0) for every step of every sequence, computed by hand: ``(T·B, hidden)``."""
    w, b = policy.encoder.net[0].weight, policy.encoder.net[0].bias
    return torch.tanh(traj.obs.reshape(-1, 3) @ w.detach().T + b.detach())


def state_end(policy) -> StageEnd:
    return StageEnd(stage=0, params=dict(policy.named_parameters()), policy=policy)


# -- metrics against hand values ------------------------------------------------------------------
def test_ranks_of_matrices_with_known_spectra():
    n = 5
    eye = torch.eye(n)
    assert effective_rank(eye) == pytest.approx(n)
    assert stable_rank(eye) == pytest.approx(n)
    assert srank(eye, 0.01) == n
    rank1 = torch.outer(torch.arange(1.0, 7.0), torch.tensor([1.0, -2.0, 0.5]))
    assert effective_rank(rank1) == pytest.approx(1.0)
    assert stable_rank(rank1) == pytest.approx(1.0)
    assert srank(rank1) == 1
    # σ = (3, 1): p = (3/4, 1/4)
    d = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(d) == pytest.approx(math.exp(h))
    assert stable_rank(d) == pytest.approx(10 / 9)
    # σ = (10, 1, 0.05): cumulative shares 0.905, 0.995, 1
    d = torch.diag(torch.tensor([10.0, 1.0, 0.05]))
    assert srank(d, 0.01) == 2 and srank(d, 0.1) == 1 and srank(d, 0.0) == 3
    # rotations do not change any of them
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    assert effective_rank(q @ d) == pytest.approx(effective_rank(d))
    zero = torch.zeros(4, 3)
    assert effective_rank(zero) == 0.0 and stable_rank(zero) == 0.0 and srank(zero) == 0


def test_dormant_and_active_units_on_constructed_activations():
    acts = torch.tensor([[1.0, -2.0, 0.0, 0.1], [1.0, 2.0, 0.0, -0.1]])
    # E|h| = (1, 2, 0, 0.1), their mean 0.775
    expected = torch.tensor([1.0, 2.0, 0.0, 0.1], dtype=torch.float64) / 0.775
    torch.testing.assert_close(unit_scores(acts), expected)
    assert dormant_mask(acts, 0.1).tolist() == [False, False, True, False]
    assert dormant_mask(acts, 0.2).tolist() == [False, False, True, True]
    assert active_fraction(acts) == 0.75
    assert active_fraction(acts, eps=0.5) == 0.5
    assert unit_scores(torch.zeros(3, 2)).tolist() == [0.0, 0.0]  # all dormant


def test_weight_magnitude_and_relative_change():
    a = {"w": torch.tensor([[1.0, -2.0]]), "b": torch.tensor([3.0])}
    assert weight_magnitude(a) == pytest.approx(2.0)
    b = {"w": torch.tensor([[1.0, -2.0]]), "b": torch.tensor([7.0])}
    assert relative_change(b, a) == pytest.approx(4.0 / math.sqrt(14.0))
    assert relative_change(a, a) == 0.0


# -- units and the probe --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_unit_slots_fit_their_parameters_and_the_probe_matches_sequence_mode(kind):
    policy = make_policy(kind, n_layers=2)
    params = dict(policy.named_parameters())
    groups = policy_units(policy)
    assert [g.name for g in groups] == ["encoder.hidden", "encoder.out", "layers.0", "layers.1"]
    for g in groups:
        for slot in g.incoming + g.outgoing:
            assert params[slot.param].shape[slot.dim] >= slot.offset + g.size, (g.name, slot)
    layer = groups[2]
    assert layer.size == (policy.layers[0].d_inner if kind == "mamba" else policy.d_model)
    traj = make_traj(policy)
    probe = probe_activations(policy, traj, groups)
    # the features and layer outputs of sequence mode (hooks on the modules it calls)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        policy.final_norm.register_forward_hook(lambda m, a, o: seen.update(f=o)),
        policy.layers[0].register_forward_hook(lambda m, a, o: seen.update(y=o[0])),
    ]
    with torch.no_grad():
        policy_evaluate(policy, None, traj)
    for h in hooks:
        h.remove()

    def rows(x):  # (B, T, d) -> (T·B, d), the probe's order
        return x.transpose(0, 1).reshape(-1, x.shape[-1])

    torch.testing.assert_close(probe.features, rows(seen["f"]))
    torch.testing.assert_close(probe.activations["encoder.hidden"], encoder_hidden(policy, traj))
    if kind in ("gru", "lstm"):  # the unit is the layer's output
        torch.testing.assert_close(probe.activations["layers.0"], rows(seen["y"]))
    else:  # out_proj of the unit activations is the layer's output
        out_proj = policy.layers[0].out_proj
        with torch.no_grad():
            y = out_proj(probe.activations["layers.0"])
        if kind != "mamba":
            y = torch.nn.functional.glu(y, dim=-1)
        torch.testing.assert_close(y, rows(seen["y"]))


def test_the_metrics_plugin_logs_and_summarises_per_stage():
    policy = make_policy("s4d")
    traj = make_traj(policy)
    metrics = PlasticityMetrics(policy, every=2)
    rows = [{} for _ in range(4)]
    metrics.after_iteration(traj, rows[0])
    grads = {n: torch.ones_like(p) for n, p in policy.named_parameters()}
    metrics.mask_gradients(grads)  # the second iteration is measured: its gradient counts
    metrics.after_iteration(traj, rows[1])
    assert rows[0] == {}
    n = sum(p.numel() for p in policy.parameters())
    assert rows[1]["plasticity/grad_norm"] == pytest.approx(math.sqrt(n))
    assert rows[1]["plasticity/weight_change"] == 0.0
    assert rows[1]["plasticity/effective_rank"] == pytest.approx(
        effective_rank(probe_activations(policy, traj).features)
    )
    with torch.no_grad():
        policy.value.bias.add_(1.0)
    metrics.end_stage(state_end(policy))
    metrics.stage_progress(0, 1, {})  # a one-iteration stage: its last iteration is measured
    metrics.after_iteration(traj, rows[2])
    assert rows[2]["plasticity/weight_change"] == 0.0  # the snapshot was taken at the stage end
    summary = metrics.summary()
    assert [s["stage"] for s in summary] == [0, 1]
    assert summary[0]["last"]["effective_rank"] == rows[1]["plasticity/effective_rank"]
    assert summary[1]["measured"] == 1


# -- remedies -------------------------------------------------------------------------------------
def test_redo_reinitialises_exactly_the_dormant_units_and_their_moments():
    policy = make_policy("mamba")
    e = policy.layers[0].d_inner
    with torch.no_grad():  # dormant: encoder hidden units 2 and 5 (tanh(0)), Mamba channel 3
        policy.encoder.net[0].weight[[2, 5]] = 0.0
        policy.encoder.net[0].bias[[2, 5]] = 0.0
        policy.layers[0].in_proj.weight[e + 3] = 0.0  # z = 0: silu(z) = 0 gates y off
    traj = make_traj(policy)
    optimizer = torch.optim.Adam(policy.parameters())
    for p in policy.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    tau = 0.1
    hand = unit_scores(encoder_hidden(policy, traj))
    assert torch.nonzero(hand <= tau).flatten().tolist() == [2, 5]
    probe = probe_activations(policy, traj)
    mamba_dormant = torch.nonzero(unit_scores(probe.activations["layers.0"]) <= tau).flatten()
    assert 3 in mamba_dormant.tolist()
    old = params_of(policy)
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in policy.named_parameters()}
    redo = ReDo(
        policy, seed=11, every=1, tau=tau, optimizer=lambda: optimizer,
        groups=["encoder.hidden", "layers.0"],
    )  # fmt: skip
    row: dict = {}
    redo.after_iteration(traj, row)
    assert row["redo_reinitialised"] == 2 + len(mamba_dormant)
    fresh = fresh_parameters(make_policy("mamba"), torch.Generator().manual_seed(11))
    expected = {n: t.clone() for n, t in old.items()}
    touched: dict[str, list[tuple[int, list[int]]]] = {}  # parameter -> (dim, indices)

    def incoming(name, idx):
        expected[name][idx] = fresh[name][idx]
        touched.setdefault(name, []).append((0, idx))

    def outgoing(name, idx):
        expected[name][:, idx] = 0.0
        touched.setdefault(name, []).append((1, idx))

    incoming("encoder.net.0.weight", [2, 5])
    incoming("encoder.net.0.bias", [2, 5])
    outgoing("encoder.net.2.weight", [2, 5])
    d = mamba_dormant.tolist()
    incoming("layers.0.in_proj.weight", d + [e + i for i in d])
    for name in ("conv1d.weight", "conv1d.bias", "dt_proj.weight", "dt_proj.bias", "A_log", "D"):
        incoming(f"layers.0.{name}", d)
    outgoing("layers.0.out_proj.weight", d)
    outgoing("layers.0.x_proj.weight", d)
    assert_params(policy, expected)  # and nothing else changed
    for n, p in policy.named_parameters():
        m = moments[n].clone()
        for dim, idx in touched.get(n, []):
            m.index_fill_(dim, torch.tensor(idx), 0.0)
        torch.testing.assert_close(optimizer.state[p]["exp_avg"], m, rtol=0, atol=0, msg=n)
    assert not torch.equal(old["encoder.net.0.weight"][2], expected["encoder.net.0.weight"][2])


def test_continual_backprop_utility_matches_a_hand_computation():
    policy = make_policy("gru", encoder_hidden=3)
    traj = make_traj(policy)
    cbp = ContinualBackprop(policy, seed=0, replacement_rate=0.5, maturity=10, decay=0.9)
    cbp.after_iteration(traj, {})
    cbp.after_iteration(traj, {})  # nothing is mature: the parameters do not change
    h_enc = encoder_hidden(policy, traj)
    out_enc = policy.encoder.net[2].weight.detach().abs().sum(0)
    seen = {}
    hook = policy.layers[0].register_forward_hook(lambda m, a, o: seen.update(y=o[0]))
    with torch.no_grad():
        policy_evaluate(policy, None, traj)
    hook.remove()
    h_gru = seen["y"].reshape(-1, 4)
    out_gru = policy.layers[0].weight_hh.detach().abs().sum(0) + 1.0  # + the residual write
    for name, h, out in (("encoder.hidden", h_enc, out_enc), ("layers.0", h_gru, out_gru)):
        contribution = (h.abs().mean(0) * out).double()
        u1 = 0.1 * contribution
        torch.testing.assert_close(cbp.utility[name], 0.9 * u1 + 0.1 * contribution)
        assert cbp.age[name].tolist() == [2] * h.shape[1]


def test_continual_backprop_replaces_the_lowest_utility_mature_unit():
    policy = make_policy("gru", encoder_hidden=3)
    with torch.no_grad():
        policy.encoder.net[2].weight[:, 1] *= 0.01  # unit 1 contributes least
    traj = make_traj(policy)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1, momentum=0.9)
    for p in policy.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    cbp = ContinualBackprop(
        policy, seed=5, replacement_rate=0.5, maturity=1, decay=0.9,
        optimizer=lambda: optimizer, groups=["encoder.hidden"],
    )  # fmt: skip
    row: dict = {}
    cbp.after_iteration(traj, row)  # ages 1: nothing eligible
    assert row["cbp_replaced"] == 0
    old = params_of(policy)
    cbp.after_iteration(traj, row)  # ages 2 > 1: 3 eligible, 0.5 · 3 = 1.5 -> one unit now
    assert row["cbp_replaced"] == 1 and cbp.pending["encoder.hidden"] == pytest.approx(0.5)
    fresh = fresh_parameters(make_policy("gru", encoder_hidden=3), torch.Generator().manual_seed(5))
    expected = {n: t.clone() for n, t in old.items()}
    for name in ("encoder.net.0.weight", "encoder.net.0.bias"):
        expected[name][1] = fresh[name][1]
    expected["encoder.net.2.weight"][:, 1] = 0.0
    assert_params(policy, expected)
    assert cbp.utility["encoder.hidden"][1] == 0.0
    assert cbp.age["encoder.hidden"].tolist() == [2, 0, 2]
    buf = optimizer.state[policy.encoder.net[0].weight]["momentum_buffer"]
    assert torch.all(buf[1] == 0) and torch.all(buf[0] != 0)


def test_shrink_perturb_is_lambda_theta_plus_sigma_fresh():
    policy = make_policy("s5")
    old = params_of(policy)
    ShrinkPerturb(policy, seed=3, shrink=0.6, perturb=0.3).start_stage()
    fresh = fresh_parameters(make_policy("s5"), torch.Generator().manual_seed(3))
    for n, p in policy.named_parameters():
        torch.testing.assert_close(p.detach(), 0.6 * old[n] + 0.3 * fresh[n], msg=n)
    assert not torch.equal(fresh["encoder.net.0.weight"], old["encoder.net.0.weight"])
    only_head = make_policy("s5")
    before = params_of(only_head)
    ShrinkPerturb(only_head, seed=3, shrink=0.5, perturb=0.0, modules=["head"]).apply()
    for n, p in only_head.named_parameters():
        want = 0.5 * before[n] if n.startswith("head.") else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=0, msg=n)


def test_reset_touches_only_the_chosen_modules_and_their_optimiser_state():
    policy = make_policy("lstm", n_layers=2)
    optimizer = torch.optim.Adam(policy.parameters())
    for p in policy.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    old = params_of(policy)
    ResetModules(
        policy, seed=9, modules=["head", "layers.1"], optimizer=lambda: optimizer
    ).start_stage()
    fresh = fresh_parameters(make_policy("lstm", n_layers=2), torch.Generator().manual_seed(9))
    for n, p in policy.named_parameters():
        chosen = n.startswith(("head.", "layers.1."))
        torch.testing.assert_close(p.detach(), fresh[n] if chosen else old[n], rtol=0, atol=0)
        assert (p in optimizer.state) != chosen, n
    assert not torch.equal(old["layers.1.weight_ih"], fresh["layers.1.weight_ih"])
    with pytest.raises(ValueError, match="no parameters under module 'critic'"):
        ResetModules(policy, seed=0, modules=["critic"])


def test_l2_init_gradient_is_2c_times_the_distance_to_the_initialisation():
    policy = make_policy("gru")
    init = params_of(policy)
    l2 = L2Init(policy, coef=0.3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p))
    params = dict(policy.named_parameters())
    stats: dict = {}
    loss = l2.loss(params, stats)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (n, p), g in zip(params.items(), grads):
        torch.testing.assert_close(g, 2 * 0.3 * (p.detach() - init[n]), msg=n)
    assert stats["l2_init_penalty"] == pytest.approx(float(loss.detach()))


def test_bad_remedy_arguments_raise_value_errors():
    policy = make_policy("gru")
    with pytest.raises(ValueError, match="no unit group 'decoder'"):
        ReDo(policy, seed=0, groups=["decoder"])
    with pytest.raises(ValueError, match="replacement_rate"):
        ContinualBackprop(policy, seed=0, replacement_rate=2.0)
    with pytest.raises(ValueError, match="shrink"):
        ShrinkPerturb(policy, seed=0, shrink=1.5)
    with pytest.raises(ValueError, match="ssm.SequencePolicy"):
        PlasticityMetrics(torch.nn.Linear(2, 2))


# -- inside the trainers --------------------------------------------------------------------------
TINY = [
    "curriculum=nav2d_quadrants",
    "max_stages=2",
    "stage_steps=240",
    "policy.kind=mamba",
    "policy.d_model=8",
    "policy.n_layers=1",
    "policy.encoder_hidden=8",
    "policy.box_head=tanh",
    "ppo.num_envs=4",
    "ppo.num_steps=20",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=1",
    "eval.every_iterations=3",
    "eval.episodes=1",
    "run.checkpoint_every=0",
    "run.threads=1",
    "plasticity.metrics_every=1",
    "plasticity.probe_steps=8",
]
META = [
    "learner=maml",
    "stage_steps=320",
    "meta.meta_batch_size=2",
    "meta.episodes_per_task=2",
    "meta.inner_steps=1",
    "meta.outer_lr=0.01",
]


def one_step_and_round_trip(overrides: list[str]) -> tuple[ContinualLearner, dict]:
    cfg = load_config(type_of_config(), None, overrides)
    built = prepare_curriculum(cfg).build()
    learner = ContinualLearner(build_policy(cfg, built), cfg, built)
    learner.set_tasks(list(built.curriculum.stages[0].tasks), seed=1)
    row = learner.step()
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = ContinualLearner(build_policy(cfg, built), cfg, built)
    other.load_state_dict(state)
    for name in ("remedy", "plasticity_metrics"):
        a, b = getattr(learner, name).state_dict(), getattr(other, name).state_dict()
        assert json.dumps(_plain(a), sort_keys=True) == json.dumps(_plain(b), sort_keys=True)
    learner.close()
    other.close()
    return learner, row


def type_of_config():
    from continual.config import SequenceConfig

    return SequenceConfig


def _plain(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def test_redo_and_the_metrics_run_inside_ppo_and_survive_a_checkpoint():
    learner, row = one_step_and_round_trip(
        [*TINY, "plasticity.remedy=redo", "plasticity.redo_every=1", "plasticity.redo_tau=0.5"]
    )
    assert isinstance(learner.trainer, PPOTrainer)
    assert row["plasticity/grad_norm"] > 0 and math.isfinite(row["plasticity/grad_norm"])
    assert row["plasticity/weight_change"] > 0  # PPO moved θ within the stage
    assert 0 <= row["plasticity/dormant_ratio"] <= 1
    assert row["redo_reinitialised"] > 0  # τ = 0.5 catches some units
    assert learner.remedy.applied == row["redo_reinitialised"]


def test_cbp_l2_init_and_the_metrics_act_on_a_maml_outer_step():
    learner, row = one_step_and_round_trip(
        [*TINY, *META, "plasticity.remedy=cbp", "plasticity.cbp_maturity=0",
         "plasticity.cbp_replacement_rate=0.25"]
    )  # fmt: skip
    assert isinstance(learner.trainer, MetaTrainer)
    assert "post_return" in row and row["plasticity/grad_norm"] > 0
    assert row["cbp_replaced"] == 2 + 2 + 4  # a quarter of 8 + 8 encoder units, 16 channels
    learner, row = one_step_and_round_trip(
        [*TINY, *META, "plasticity.remedy=l2_init", "plasticity.l2_init_coef=0.5"]
    )
    assert row["l2_init_penalty"] == 0.0  # θ is θ_0 when the outer loss is taken
    assert learner.remedy.loss(dict(learner.policy.named_parameters()), {}) > 0


def test_a_sequence_run_logs_the_metrics_and_summarises_them_per_stage(tmp_path):
    overrides = [*TINY, "plasticity.metrics_every=2", "plasticity.remedy=shrink_perturb"]
    cfg = load_config(type_of_config(), None, [*overrides, f"run.root={tmp_path}"])
    result = run_sequence(cfg)
    rows = [r for r in result.run.read_metrics() if r.get("kind") != "eval"]
    assert len(rows) == 6  # 2 stages of 3 iterations
    has = [("plasticity/effective_rank" in r) for r in rows]
    assert has == [False, True, True, True, False, True]  # every 2nd, and each stage's last
    summary = json.loads((result.run.path / "results.json").read_text())["plasticity"]
    assert [s["stage"] for s in summary] == [0, 1]
    assert [s["measured"] for s in summary] == [2, 2]
    assert summary[1]["last"]["effective_rank"] == rows[-1]["plasticity/effective_rank"]
    assert result.results["plasticity"] == summary
    state = result.run.load_checkpoint()["trainer"]["learner"]
    assert state["remedy"]["applied"] == 2  # shrink & perturb at both stage ends


def test_a_stage_is_scored_before_a_reset_prepares_the_next_one():
    """Resets and shrink & perturb act at the next stage's start, after the ended stage's
    evaluation: stage 0 trains identically with and without them, so the end-of-stage-0 row of R
    is the same (before the fix R[0, 0] scored the freshly reset head)."""
    from test_continual_learner import TINY

    from continual.config import SequenceConfig
    from continual.sequence import run_sequence
    from metarl.config import load_config

    rows = {}
    for remedy in ("none", "reset", "shrink_perturb"):
        cfg = load_config(SequenceConfig, None, [*TINY, f"plasticity.remedy={remedy}"])
        rows[remedy] = run_sequence(cfg, write=False).results["R"]
    assert rows["reset"][0] == rows["none"][0] == rows["shrink_perturb"][0]
    assert rows["reset"][1] != rows["none"][1]  # the reset did act, on stage 1
