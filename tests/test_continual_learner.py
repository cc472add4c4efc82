"""The continual learner and its harness on a tiny two-stage nav2d sequence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from continual.cli import main as cli_main
from continual.config import SequenceConfig
from continual.distill import head_kl
from continual.evaluation import first_episode_stats
from continual.learner import ContinualLearner
from continual.sequence import (
    build_policy,
    prepare_curriculum,
    resume_sequence,
    run_sequence,
)
from metarl.config import ConfigError, load_config
from metarl.run_dir import RunDir

# 2 stages x 3 iterations of 4 envs x 20 steps; a tiny GRU
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
    "ppo.update_epochs=1",
    "eval.every_iterations=2",
    "eval.episodes=1",
    "replay.buffer.capacity=2000",
    "replay.buffer.seq_len=10",
    "replay.steps_per_stage=160",
    "replay.batch_size=4",
    "regularizer.fisher_iterations=1",
    "run.checkpoint_every=0",
    "run.threads=1",
]

PLUGINS = {
    "finetuning": [],
    "l2": ["regularizer.kind=l2", "regularizer.strength=1.0"],
    "ewc": ["regularizer.kind=ewc", "regularizer.strength=10.0"],
    "packnet": ["regularizer.kind=packnet", "regularizer.retrain_fraction=0.34"],
    "replay": ["replay.enabled=true"],
    "ewc+replay+drift": [
        "regularizer.kind=ewc",
        "replay.enabled=true",
        "drift.enabled=true",
    ],
    "hidden": ["boundaries=hidden", "drift.enabled=true", "regularizer.kind=ewc"],
}


def tiny_config(*extra: str, root=None) -> SequenceConfig:
    overrides = [*TINY, *extra]
    if root is not None:
        overrides.append(f"run.root={root}")
    return load_config(SequenceConfig, None, overrides)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_each_plugin_combination_produces_a_well_formed_R(plugin):
    result = run_sequence(tiny_config(*PLUGINS[plugin]), write=False)
    R = np.array(result.results["R"])
    assert R.shape == (2, 2)
    assert np.all(np.isfinite(R)) and np.all((R >= 0) & (R <= 1))
    s = result.summary
    assert math.isclose(s["average_performance"], R[-1].mean())
    assert math.isclose(s["forgetting"], np.mean(np.diag(R) - R[-1]))
    # evaluations: the start, every 2 iterations and each stage's end
    assert result.results["eval_steps"] == [0, 160, 240, 400, 480]
    if "drift" in " ".join(PLUGINS[plugin]):
        assert set(s["detection"]) >= {"detection_rate", "mean_delay_steps", "false_alarms"}


def test_the_in_context_rl2_core_runs_through_the_stages_with_plugins():
    cfg = tiny_config(
        "learner=rl2",
        "episodes_per_trial=2",
        "stage_steps=320",
        "regularizer.kind=ewc",
        "replay.enabled=true",
    )
    result = run_sequence(cfg, write=False)
    assert np.array(result.results["R"]).shape == (2, 2)
    assert result.results["eval_steps"] == [0, 320, 640]  # 2 trials of 4 x 40 steps per stage


def test_packnet_keeps_a_finished_task_bit_identical():
    result = run_sequence(tiny_config(*PLUGINS["packnet"]), write=False)
    R = result.results["R"]
    assert R[1][0] == R[0][0]  # the same masked weights, the same eval seeds


def build_learner(*extra: str) -> tuple[ContinualLearner, object]:
    cfg = tiny_config(*extra)
    curriculum = prepare_curriculum(cfg)
    built = curriculum.build()
    torch.manual_seed(0)
    learner = ContinualLearner(build_policy(cfg, built), cfg, built)
    learner.set_tasks(list(curriculum.stages[0].tasks), seed=0)
    return learner, built


def test_drift_detection_opens_a_new_stage_on_a_synthetic_switch():
    learner, _ = build_learner(
        "boundaries=hidden", "drift.enabled=true", "regularizer.kind=ewc", "replay.enabled=true"
    )
    for _ in range(2):
        learner.step()
    adam_steps_before = len(learner.optimizer.state)
    assert adam_steps_before > 0
    # a stable, slowly falling value loss, then a jump (critic surprise: +4.9)
    fired_at = None
    for k in range(12):
        value_loss = 0.1 * 0.97**k if k < 10 else 10.0
        row = {"value_loss": value_loss, "explained_variance": 0.5, "episodic_return": -1.0}
        if learner.observe(row):
            fired_at = k
            break
    assert fired_at == 10
    assert learner.stage == 1 and learner.stage_iteration == 0
    assert learner.regularizer.num_consolidations == 1
    assert learner.buffer.stage_sizes() and set(learner.buffer.stage_sizes()) == {0}
    assert len(learner.optimizer.state) == 0  # drift.reset_optimizer
    assert learner.detections[0]["learner_stage"] == 0


def test_a_watching_detector_does_not_change_a_known_boundary_run():
    plain = run_sequence(tiny_config("regularizer.kind=ewc"), write=False)
    watched = run_sequence(tiny_config("regularizer.kind=ewc", "drift.enabled=true"), write=False)
    assert plain.results["curves"] == watched.results["curves"]
    assert "detection" in watched.summary and "detection" not in plain.summary


def test_replay_priorities_follow_the_distillation_loss():
    learner, _ = build_learner("replay.enabled=true")
    learner.step()
    learner.end_stage()
    before = learner.buffer.priorities(0)
    assert len(set(before.values())) == 1  # new items get the largest priority seen
    row = learner.step()
    after = learner.buffer.priorities(0)
    assert row["replay_policy_loss"] >= 0 and len(set(after.values())) > 1


def test_resume_at_a_stage_boundary_matches_an_uninterrupted_run(tmp_path):
    extra = ["regularizer.kind=ewc", "replay.enabled=true", "drift.enabled=true"]
    whole = run_sequence(tiny_config(*extra, root=tmp_path / "a"))
    part = run_sequence(tiny_config(*extra, "run.stop_after=3", root=tmp_path / "b"))
    assert part.status == "stopped"
    status = json.loads((part.run.path / "status.json").read_text())
    assert status["status"] == "stopped" and status["stage"] == 1
    resumed = resume_sequence(part.run.path, ["run.stop_after=null"])
    assert resumed.status == "finished"
    assert resumed.results["R"] == whole.results["R"]
    assert resumed.results["curves"] == whole.results["curves"]
    a = RunDir.open(whole.run.path).load_checkpoint()
    b = RunDir.open(resumed.run.path).load_checkpoint()
    policy_a = a["trainer"]["learner"]["trainer"]["policy"]
    policy_b = b["trainer"]["learner"]["trainer"]["policy"]
    for name, p in policy_a.items():
        assert torch.equal(p, policy_b[name]), name
    rows_a = [r for r in RunDir.open(whole.run.path).read_metrics() if r.get("kind") != "eval"]
    rows_b = [r for r in RunDir.open(resumed.run.path).read_metrics() if r.get("kind") != "eval"]
    strip = ("steps_per_second",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows_b
    ]


def test_resume_from_a_mid_stage_checkpoint_finishes_the_sequence(tmp_path):
    cfg = tiny_config(
        "replay.enabled=true", "run.checkpoint_every=1", "run.stop_after=2", root=tmp_path
    )
    part = run_sequence(cfg)
    assert part.status == "stopped"
    assert len(part.run.checkpoints()) >= 1  # iteration 2 of stage 0
    code = cli_main(["--resume", str(part.run.path), "run.stop_after=null"])
    assert code == 0
    results = json.loads((part.run.path / "results.json").read_text())
    assert np.array(results["R"]).shape == (2, 2)
    steps = [r["step"] for r in part.run.read_metrics() if r.get("kind") != "eval"]
    assert steps == sorted(set(steps)) == [80 * k for k in range(1, 7)]  # no duplicated rows


def test_run_directory_holds_the_results_table_and_plots(tmp_path):
    result = run_sequence(tiny_config("reference.mode=run", root=tmp_path))
    path = result.run.path
    for name in (
        "results.json",
        "R.json",
        "metrics.md",
        "plots/R.png",
        "plots/curves.png",
        "reference.json",
        "status.json",
    ):
        assert (path / name).is_file(), name
    table = (path / "metrics.md").read_text()
    assert "forward transfer" in table and "R[i, j]" in table
    # the reference of stage 0 is the same run as stage 0 of fine-tuning: FT_0 = 0 (up to the
    # float rounding of evaluating one task's envs alone rather than beside the others)
    assert result.summary["forward_transfer_per_stage"][0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["regularizer.kind=packnet", "boundaries=hidden", "drift.enabled=true"], "packnet"),
        (["boundaries=hidden"], "drift.enabled"),
        (["replay.enabled=true", "replay.buffer.seq_len=64"], "must fit in one PPO sequence"),
        (["regularizer.kind=ewcc"], "expected one of"),
        (["drift.streem=return"], "did you mean 'drift.stream'"),
        (["reference.mode=file"], "reference.path"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)


def test_cli_runs_and_prints_the_metrics_table(tmp_path, capsys):
    code = cli_main([*TINY, f"run.root={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "average performance" in out and "R[i, j]" in out
    assert cli_main(["regularizer.kind=nope"]) == 2


def test_head_kl_matches_torch_distributions():
    from ssm.heads import CategoricalHead, GaussianHead

    g = GaussianHead(4, np.full(2, -1.0), np.full(2, 1.0))
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(p[:, :2], p[:, 2:].exp()),
        torch.distributions.Normal(q[:, :2], q[:, 2:].exp()),
    ).sum(-1)
    torch.testing.assert_close(head_kl(g, p, q), ref)
    c = CategoricalHead(4, 3)
    lp, lq = torch.randn(5, 3).log_softmax(-1), torch.randn(5, 3).log_softmax(-1)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=lp), torch.distributions.Categorical(logits=lq)
    )
    torch.testing.assert_close(head_kl(c, lp, lq), ref)
    assert torch.allclose(head_kl(c, lp, lp), torch.zeros(5), atol=1e-6)


def test_first_episode_stats_stop_at_each_envs_first_episode_end():
    from types import SimpleNamespace

    dones = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    traj = SimpleNamespace(
        dones=dones,
        rewards=torch.tensor([[1.0, 1.0], [2.0, 1.0], [5.0, 1.0], [7.0, 9.0]]),
        success=torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
    )
    returns, success = first_episode_stats(traj)
    np.testing.assert_array_equal(returns, [3.0, 3.0])
    np.testing.assert_array_equal(success, [0.0, 1.0])


# -- a meta-learner inside the continual harness ----------------------------------------------

# 2 stages x 2 outer iterations of 2 tasks x 2 episodes x 20 steps (support + query: 160 steps)
TINY_META = [
    "learner=maml",
    "stage_steps=320",
    "meta.meta_batch_size=2",
    "meta.episodes_per_task=2",
    "meta.inner_steps=1",
    "meta.outer_lr=0.01",
    "regularizer.kind=ewc",
    "regularizer.strength=10.0",
    "replay.enabled=true",
]


def test_maml_runs_inside_the_continual_harness_with_ewc_and_replay(tmp_path):
    result = run_sequence(tiny_config(*TINY_META, root=tmp_path))
    assert result.status == "finished"
    assert np.array(result.results["R"]).shape == (2, 2)
    assert result.results["stage_iterations"] == [2, 2]
    rows = [r for r in result.run.read_metrics() if r.get("kind") != "eval"]
    assert [r["stage"] for r in rows] == [0, 0, 1, 1]
    assert all("post_return" in r and "outer_loss" in r for r in rows)  # MAML's own row
    first, second = rows[:2], rows[2:]
    # stage 0: no anchor and an empty buffer; stage 1: the EWC penalty (0 at the anchor, where
    # stage 1 starts; then > 0) and the replay term act on the outer loss
    assert all(r["penalty"] == 0.0 and "replay_policy_loss" not in r for r in first)
    assert second[0]["penalty"] == 0.0 and second[1]["penalty"] > 0.0
    # (the replayed chunks are relabelled by the policy stage 0 ended with: KL 0 there too)
    assert second[0]["replay_policy_loss"] == pytest.approx(0.0, abs=1e-6)
    assert second[1]["replay_policy_loss"] > 0.0
    state = RunDir.open(result.run.path).load_checkpoint()["trainer"]["learner"]
    assert state["regularizer"]["num_consolidations"] == 2  # one per stage end
    assert state["stage"] == 2
    # judged by how well it still adapts: R_pre and R_adapt beside the greedy R
    res = result.results
    R_pre, R_adapt = np.array(res["R_pre"]), np.array(res["R_adapt"])
    assert R_pre.shape == R_adapt.shape == (2, 2)
    assert np.all((R_adapt >= 0) & (R_adapt <= 1))
    s = result.summary
    assert s["average_adapted_performance"] == pytest.approx(R_adapt[-1].mean())
    assert s["adaptation_gain"] == pytest.approx((R_adapt[-1] - R_pre[-1]).mean())
    assert s["adapted_forgetting"] == pytest.approx(np.mean(np.diag(R_adapt) - R_adapt[-1]))
    table = (result.run.path / "metrics.md").read_text()
    assert "R_adapt[i, j]" in table and "average adapted performance" in table
    assert (result.run.path / "plots" / "R_adapt.png").is_file()


def test_with_zero_adaptation_steps_r_adapt_is_r_pre():
    result = run_sequence(tiny_config(*TINY_META, "eval.adapt_steps=0"), write=False)
    assert result.results["R_adapt"] == result.results["R_pre"]
    assert result.summary["adaptation_gain"] == 0.0


def test_stage_end_matrices_take_each_stages_last_evaluation():
    from continual.sequence import stage_end_matrix

    points = [  # two stages of 3 and 2 iterations; evaluations at 0, mid-stage and the ends
        {"stage": 0, "stage_iteration": 0, "scores": [0.0, 0.0], "adapted_scores": [0.1, 0.1]},
        {"stage": 0, "stage_iteration": 2, "scores": [0.5, 0.0]},
        {"stage": 0, "stage_iteration": 3, "scores": [0.9, 0.1], "adapted_scores": [0.95, 0.4]},
        {"stage": 1, "stage_iteration": 2, "scores": [0.6, 0.8], "adapted_scores": [0.9, 0.85]},
    ]
    assert stage_end_matrix(points, [3, 2], "scores").tolist() == [[0.9, 0.1], [0.6, 0.8]]
    R_adapt = stage_end_matrix(points, [3, 2], "adapted_scores")
    assert R_adapt.tolist() == [[0.95, 0.4], [0.9, 0.85]]
    with pytest.raises(ValueError, match="stages \\[1\\]"):
        stage_end_matrix(points[:3], [3, 2], "scores")


def _meta_gradients_with(monkeypatch, make_plugin, strengths):
    """The meta-gradient of one MAML step of a fresh learner (same seed) with the plugin
    ``make_plugin(strength, params)`` added, per strength; and θ before the step."""
    import metarl.meta.train as meta_train

    cfg = tiny_config(*TINY_META[:-3])
    built = prepare_curriculum(cfg).build()
    seen = []
    apply = meta_train._apply

    def spy(optimizer, named, grads, max_norm):
        seen.append({k: g.clone() for k, g in grads.items()})
        return apply(optimizer, named, grads, max_norm)

    monkeypatch.setattr(meta_train, "_apply", spy)
    grads = []
    for strength in strengths:
        torch.manual_seed(0)
        learner = ContinualLearner(build_policy(cfg, built), cfg, built)
        params = dict(learner.policy.named_parameters())
        learner.plugins.append(make_plugin(strength, params))
        theta = {k: v.detach().clone() for k, v in params.items()}
        learner.step()
        grads.append(seen[-1])
    return grads, theta


def test_a_plugin_loss_on_the_outer_loss_adds_its_gradient_to_the_meta_gradient(monkeypatch):
    """EWC on a MAML meta-initialisation is the same plugin as on PPO: its penalty's gradient at
    θ is added to the meta-gradient, exactly."""
    from continual.regularizers import L2Anchor

    def anchor_at_zero(strength, params):
        anchor = L2Anchor(strength)
        anchor.consolidate({k: torch.zeros_like(v) for k, v in params.items()})
        return anchor

    grads, theta = _meta_gradients_with(monkeypatch, anchor_at_zero, (0.0, 3.0))
    for name, g0 in grads[0].items():
        torch.testing.assert_close(grads[1][name] - g0, 2 * 3.0 * theta[name], msg=name)


def test_ewc_on_a_maml_initialisation_adds_exactly_2_lambda_F_theta_minus_anchor(monkeypatch):
    """The EWC plugin inside the continual harness: with a known diagonal Fisher F and anchor θ*,
    the meta-gradient of a MAML step grows by exactly 2 λ F (θ − θ*), parameter by parameter."""
    from continual.regularizers import EWC

    known: dict = {}

    def ewc_with_known_fisher(strength, params):
        if not known:
            g = torch.Generator().manual_seed(1)
            known["F"] = {k: torch.rand(v.shape, generator=g) for k, v in params.items()}
            known["anchor"] = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        ewc = EWC(strength)
        ewc.consolidate_fisher(known["anchor"], known["F"])
        return ewc

    lam = 2.5
    grads, theta = _meta_gradients_with(monkeypatch, ewc_with_known_fisher, (0.0, lam))
    for name, g0 in grads[0].items():
        want = 2 * lam * known["F"][name] * (theta[name] - known["anchor"][name])
        torch.testing.assert_close(grads[1][name] - g0, want, msg=name)


def test_a_curriculum_file_is_read_as_an_override_and_copied_into_the_run(tmp_path):
    from curricula.curriculum import _data_dir

    mine = tmp_path / "my.yaml"
    mine.write_text((_data_dir() / "nav2d_quadrants.yaml").read_text())
    root = tmp_path / "runs"
    args = [f"curriculum={mine}", *TINY[1:], f"run.root={root}", "run.stop_after=3"]
    assert cli_main(args) == 0  # the first argument is an override, not a config file name
    (run_path,) = root.iterdir()
    assert (run_path / "curriculum.yaml").read_text() == mine.read_text()
    mine.write_text("not: [a curriculum")  # edited between the stop and the resume
    assert cli_main(["--resume", str(run_path), "run.stop_after=null"]) == 0
    results = json.loads((run_path / "results.json").read_text())
    assert np.array(results["R"]).shape == (2, 2)


@pytest.mark.parametrize(
    "more",
    [
        ["replay.kind=distill"],
        ["replay.kind=meta"],
        ["replay.kind=meta", "drift.enabled=true", "drift.stream=return"]
        + ["drift.adapt_on_drift=true", "drift.acting_tasks=2"],
        ["replay.kind=meta", "boundaries=hidden", "drift.enabled=true"]
        + ["drift.stream=reward_surprise", "drift.transform=none"]
        + ["drift.page_hinkley.min_instances=1", "drift.page_hinkley.threshold=0.01"]
        + ["drift.page_hinkley.delta=0.0"],
    ],
    ids=["distill", "meta-replay", "meta-replay+acting", "hidden-reward-surprise"],
)
def test_a_maml_sequence_resumed_at_a_stage_boundary_matches_an_uninterrupted_run(tmp_path, more):
    extra = [*TINY_META, *more]
    whole = run_sequence(tiny_config(*extra, root=tmp_path / "a"))
    part = run_sequence(tiny_config(*extra, "run.stop_after=2", root=tmp_path / "b"))
    assert part.status == "stopped"
    resumed = resume_sequence(part.run.path, ["run.stop_after=null"])
    for key in ("R", "R_pre", "R_adapt", "curves", "detections"):
        assert resumed.results[key] == whole.results[key], key
    a = RunDir.open(whole.run.path).load_checkpoint()["trainer"]["learner"]["trainer"]
    b = RunDir.open(resumed.run.path).load_checkpoint()["trainer"]["learner"]["trainer"]
    for name, p in a["policy"].items():
        assert torch.equal(p, b["policy"][name]), name


def test_seeds_flag_runs_each_seed_and_writes_the_aggregate_table(tmp_path, capsys):
    code = cli_main([*TINY[:3], "--seeds", "1", "2", *TINY[3:], f"run.root={tmp_path}"])
    assert code == 0
    runs = sorted(p for p in tmp_path.iterdir() if not p.name.endswith("seeds-1-2"))
    assert len(runs) == 2
    agg = json.loads((tmp_path / "nav2d_quadrants-seeds-1-2" / "aggregate.json").read_text())
    assert agg["seeds"] == [1, 2] and "Student-t" in agg["statistic"]
    per_seed = [json.loads((r / "results.json").read_text()) for r in runs]
    ap = agg["metrics"]["average_performance"]
    assert sorted(ap["values"]) == sorted(r["summary"]["average_performance"] for r in per_seed)
    assert ap["mean"] == pytest.approx(np.mean(ap["values"]))
    assert ap["n"] == 2 and ap["ci95"] > 0 or ap["values"][0] == ap["values"][1]
    assert "mean ± 95% CI" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--seeds", "1", "1"], "distinct"), (["--seeds", "1", "seed=3"], "not seed=")],
)
def test_bad_seeds_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    assert cli_main([*TINY, f"run.root={tmp_path}", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# -- meta-replay --------------------------------------------------------------------------------


def _stored_tasks(sizes: dict[int, int]):
    from types import SimpleNamespace

    from continual.meta_replay import MetaReplay

    replay = MetaReplay(
        SimpleNamespace(task_losses=None),
        torch.Generator().manual_seed(0),
        tasks=10,
        current_fraction=0.5,
    )
    for stage, n in sizes.items():
        for _ in range(n):
            replay.items.append({"stage": stage, "support": None, "query": None, "priority": 1.0})
    return replay


def test_meta_replay_draws_stage_proportions_inside_a_meta_batch():
    replay = _stored_tasks({0: 30, 1: 10, 2: 20})  # stage 2 finished last
    chosen, weights, counts = replay.draw(10)
    # half from the last stage, the other half over the older ones by size (30:10 -> 4:1, by
    # largest remainder: 3.75 -> 4, 1.25 -> 1)
    assert counts == {0: 4, 1: 1, 2: 5}
    stages = [replay.items[i]["stage"] for i in chosen]
    assert {s: stages.count(s) for s in (0, 1, 2)} == counts
    assert len(set(chosen)) == 10 and weights.max() == 1.0
    # within a stage, the draw follows the priorities: a task with 20x the loss comes far more
    for i, item in enumerate(replay.items):
        if item["stage"] == 2:
            item["priority"] = 20.0 if i == 40 else 0.05
    hits = sum(40 in replay.draw(10)[0] for _ in range(200))
    assert hits > 150  # 5 draws from 20 tasks: uniform would pick it ~50 times in 200


def test_meta_replay_joins_the_maml_outer_loss_from_the_second_stage(tmp_path):
    cfg = tiny_config(*TINY_META[:-1], "replay.enabled=true", "replay.kind=meta", root=tmp_path)
    result = run_sequence(cfg)
    rows = [r for r in result.run.read_metrics() if r.get("kind") != "eval"]
    assert all("meta_replay_loss" not in r for r in rows[:2])
    # stage 0's last iterations left 2 tasks each; every outer step of stage 1 draws 4 of them
    assert all(r["meta_replay_tasks"] == 4 for r in rows[2:])
    assert all(math.isfinite(r["meta_replay_loss"]) for r in rows[2:])
    state = RunDir.open(result.run.path).load_checkpoint()["trainer"]["learner"]["replay"]
    assert [it["stage"] for it in state["items"]] == [0] * 4 + [1] * 4


def test_meta_replay_needs_a_maml_learner():
    with pytest.raises(ConfigError, match="replay.kind=meta"):
        tiny_config("replay.enabled=true", "replay.kind=meta")


def test_task_distribution_stages_are_scored_on_their_held_out_tasks():
    cfg = tiny_config(
        *TINY_META,
        "curriculum=nav2d_quadrant_distributions",
        "learner=fomaml",
        "replay.kind=meta",
        "policy.box_head=gaussian",
    )
    result = run_sequence(cfg, write=False)
    evaluated = {name for p in result.results["points"] for name in p["tasks"]}
    assert evaluated == {"ne_test", "sw_test"}  # never the train goals
    assert result.results["stage_eval_tasks"] == [["ne_test"], ["sw_test"]]
    assert np.array(result.results["R_adapt"]).shape == (2, 2)


# -- adapt on drift -----------------------------------------------------------------------------

DRIFT_META = [
    "boundaries=hidden",
    "drift.enabled=true",
    "drift.stream=return",
    "drift.transform=fall",
    "drift.acting_tasks=2",
    "drift.adapt_iterations=2",
]


def test_reward_surprise_reads_support_and_query_and_starts_over_at_a_detection(monkeypatch):
    from continual.drift import Detection

    cfg = tiny_config(
        *TINY_META,
        "boundaries=hidden",
        "drift.enabled=true",
        "drift.stream=reward_surprise",
        "drift.transform=none",
        "drift.page_hinkley.min_instances=1",
    )
    built = prepare_curriculum(cfg).build()
    torch.manual_seed(0)
    learner = ContinualLearner(build_policy(cfg, built), cfg, built)
    first = learner.step()
    assert math.isnan(first["reward_surprise"])  # no fit yet
    model = learner.reward_model
    support, query = learner.trainer.last_batch, learner.trainer.last_query
    steps = support.T * support.B + query.T * query.B
    assert float(model._n) == steps  # both the support and the query entered the fit
    second = learner.step()
    assert math.isfinite(second["reward_surprise"])
    fire = lambda step, **values: [Detection("reward_surprise", step, 9.0)]  # noqa: E731
    monkeypatch.setattr(learner.monitor, "update", fire)
    third = learner.step()
    assert third["detection"] and learner.stage == 1
    assert float(model._n) == 0  # the new distribution starts a fresh fit


def test_a_meta_learner_may_watch_reward_surprise_but_not_the_ppo_critic():
    with pytest.raises(ConfigError, match="reward_surprise or return"):
        tiny_config(*TINY_META, "drift.enabled=true", "drift.stream=critic_surprise")
    with pytest.raises(ConfigError, match="reward_forget"):  # checked with the detector off too
        tiny_config(*TINY_META, "drift.reward_forget=2", "drift.stream=return")


def test_the_acting_agent_adapts_at_a_detection_and_acts_with_phi_for_a_window():
    cfg = tiny_config(*TINY_META, *DRIFT_META, "drift.adapt_on_drift=true")
    built = prepare_curriculum(cfg).build()
    torch.manual_seed(0)
    learner = ContinualLearner(build_policy(cfg, built), cfg, built)
    learner.trainer.step()
    acting = learner.acting
    first = acting.step(learner.trainer, detected=False)
    assert first["acting_adapted"] is False and math.isfinite(first["acting_return"])
    theta = learner.trainer.learner.params()
    rows = [acting.step(learner.trainer, detected=True)]
    rows += [acting.step(learner.trainer, detected=False) for _ in range(2)]
    assert [r["acting_adapted"] for r in rows] == [True, True, False]  # a 2-iteration window
    assert any(not torch.equal(acting.phi[k], theta[k]) for k in theta)  # φ moved from θ


@pytest.mark.parametrize("readapt", [True, False])
def test_readapt_adapts_the_acting_parameters_again_from_the_current_theta(readapt):
    cfg = tiny_config(
        *TINY_META, *DRIFT_META, "drift.adapt_on_drift=true", f"drift.readapt={readapt}"
    )
    built = prepare_curriculum(cfg).build()
    torch.manual_seed(0)
    learner = ContinualLearner(build_policy(cfg, built), cfg, built)
    trainer, acting = learner.trainer, learner.acting
    trainer.step()
    acting.step(trainer, detected=True)
    at_detection = {k: v.clone() for k, v in acting.phi.items()}
    trainer.step()  # meta-training moves θ and collects a new support batch
    assert acting.step(trainer, detected=False)["acting_adapted"]
    meta = trainer.learner
    again = meta.adapt(meta.params(), meta.prepare(trainer.last_batch))
    expected = again if readapt else at_detection
    assert all(torch.equal(acting.phi[k], expected[k].detach()) for k in expected)
    assert any(not torch.equal(again[k], at_detection[k]) for k in again)


def test_without_adapt_on_drift_theta_acts_and_the_report_has_one_value_per_switch():
    result = run_sequence(tiny_config(*TINY_META, *DRIFT_META), write=False)
    report = result.results["acting"]
    assert report["adapt_on_drift"] is False and report["switch_iterations"] == [2]
    assert len(report["post_switch_returns"]) == 1
    assert [i for i, _ in report["acting_returns"]] == [1, 2, 3, 4]


def test_post_switch_returns_average_the_window_after_each_switch():
    from continual.adapt_on_drift import post_switch_returns

    rows = [{"iteration": i, "acting_return": float(i)} for i in range(1, 11)]
    assert post_switch_returns(rows, [3, 7], window=2) == [4.5, 8.5]  # (4+5)/2, (8+9)/2


def test_ppo_with_adapt_steps_is_judged_by_fine_tuning_and_scratch_is_the_first_row():
    cfg = tiny_config(
        "curriculum=nav2d_quadrant_distributions", "eval.adapt_steps=1", "regularizer.kind=ewc"
    )
    result = run_sequence(cfg, write=False)
    R_adapt = np.array(result.results["R_adapt"])
    assert R_adapt.shape == (2, 2)
    first = next(p for p in result.results["points"] if "adapted_scores" in p)
    assert first["iteration"] == 0  # before any training: adaptation from scratch
    s = result.summary
    assert s["scratch_adapted_performance"] == pytest.approx(np.mean(first["adapted_scores"]))
    plain = run_sequence(tiny_config("curriculum=nav2d_quadrant_distributions"), write=False)
    assert "R_adapt" not in plain.results  # PPO without adapt_steps: Continual World metrics


# -- a run grows a skill library ----------------------------------------------------------------


def test_a_meta_sequence_grows_a_skill_library_with_provenance(tmp_path):
    from skills import SkillLibrary

    library = tmp_path / "lib"
    extra = ["curriculum=nav2d_quadrant_distributions", "policy.box_head=gaussian"]
    cfg = tiny_config(*TINY_META, *extra, f"skills.library={library}", root=tmp_path / "runs")
    result = run_sequence(cfg)
    names = result.results["skills"]
    assert len(names) == 4  # 2 tasks x 2 stages
    lib = SkillLibrary.open(library)
    assert sorted(lib.list()) == sorted(names)
    info = lib.info(names[-1])
    prov = info.metadata["provenance"]
    assert prov["run"] == result.run.path.name and prov["stage"] == 1
    assert prov["adapt_steps"] == 1 and prov["task"]["family"] == "nav2d"
    skill = lib.get(names[0])
    action, _ = skill.act(np.zeros(skill.spec.obs_shape, np.float32))
    assert np.all(np.isfinite(action))


def test_an_unknown_skill_sink_is_refused_before_anything_is_written(tmp_path):
    cfg = tiny_config(f"skills.library={tmp_path / 'lib'}", "skills.sink=nope", root=tmp_path)
    with pytest.raises(ConfigError, match="no skill sink 'nope'"):
        run_sequence(cfg)
    assert not any(tmp_path.iterdir())
