"""Gradient meta-learners in the runner: exact resume, NaN stops, time limits, and the
``adapt-eval`` command (adaptation curves and baselines on the same samples)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import cli, few_shot, runner
from metarl.config import load_config
from metarl.meta import MetaTrainer
from metarl.meta.adaptation import parse_steps
from metarl.run_dir import RunDir

TINY = [
    "algo=maml",
    "family=nav2d",
    "family_kwargs={max_episode_steps: 5}",
    "policy.kind=gru",
    "policy.d_model=8",
    "policy.encoder_hidden=16",
    "policy.n_layers=1",
    "meta.meta_batch_size=2",
    "meta.episodes_per_task=2",
    "meta.iterations=4",
    "eval.tasks=3",
    "eval.adapt_steps=2",
    "logging.wandb=disabled",
    "logging.progress=false",
    "run.checkpoint_every=2",
    "run.threads=1",
]
TIMING = {"steps_per_second"}


def tiny(root: Path, *extra: str) -> runner.TrainConfig:
    return load_config(runner.TrainConfig, None, [*TINY, f"run.root={root}", *extra])


def learning_rows(run: RunDir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in run.read_metrics()]


def same_floats(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (maml logs NaN for quantities that do not apply)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize(
    "extra",
    [
        ["meta.lr_mode=lslr"],  # second order, learned inner lrs: Adam moments for θ and for α
        ["meta.algo=fomaml", "meta.outer=trpo", "meta.baseline=critic", "meta.trpo_cg_steps=3"],
    ],
    ids=["maml-lslr-adam", "fomaml-trpo-critic"],
)
def test_resumed_maml_run_matches_uninterrupted_run_exactly(tmp_path, extra):
    full = runner.train(tiny(tmp_path / "full", *extra))
    part = runner.train(tiny(tmp_path / "part", *extra, "run.stop_after=3"))
    status = json.loads((part.path / runner.STATUS_FILE).read_text())
    assert status["status"] == "stopped" and status["iteration"] == 3
    assert len(part.read_metrics()) == 3  # row 3 came after the checkpoint at 2: re-run on resume
    resumed = runner.resume(part.path, ["run.stop_after=null"])
    rows_full, rows_resumed = learning_rows(full), learning_rows(resumed)
    assert len(rows_full) == 4 and same_floats(rows_full, rows_resumed)
    state_full = full.load_checkpoint("latest")["trainer"]
    state_resumed = resumed.load_checkpoint("latest")["trainer"]
    for key in ("policy", "inner_lrs"):
        assert state_full[key].keys() == state_resumed[key].keys()
        for k in state_full[key]:
            assert torch.equal(state_full[key][k], state_resumed[key][k]), (key, k)
    if "meta.lr_mode=lslr" in extra:
        assert state_full["inner_lrs"] and state_full["lr_optimizer"] is not None
        lrs = torch.cat([v.reshape(-1) for v in state_full["inner_lrs"].values()])
        assert (lrs != 0.1).any()  # the learned lrs moved, so restoring them matters
    eval_full = json.loads((full.path / "eval.json").read_text())
    eval_resumed = json.loads((resumed.path / "eval.json").read_text())
    assert eval_full["steps"] == [0, 1, 2] and same_floats(
        eval_full["return"], eval_resumed["return"]
    )
    assert (resumed.plot_dir / "training.png").stat().st_size > 0


def test_nan_parameters_stop_a_maml_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = MetaTrainer.step

    def poisoned(self):
        if self.iteration == 2:
            with torch.no_grad():
                self.policy.value.weight.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(MetaTrainer, "step", poisoned)
    with pytest.raises(runner.TrainingDiverged, match=r"not finite.*last good checkpoint"):
        runner.train(tiny(tmp_path))
    run = RunDir.open(next(tmp_path.iterdir()))
    status = json.loads((run.path / runner.STATUS_FILE).read_text())
    assert status["status"] == "diverged" and status["iteration"] == 2
    state = run.load_checkpoint("latest")["trainer"]
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["policy"].values())


def test_time_limit_stops_resumably_with_a_checkpoint(tmp_path):
    run = runner.train(tiny(tmp_path, "run.time_limit_minutes=1e-6", "run.checkpoint_every=10"))
    status = json.loads((run.path / runner.STATUS_FILE).read_text())
    assert status["status"] == "stopped" and status["iteration"] == 1
    assert "time limit" in status["message"]
    assert run.load_checkpoint("latest")["trainer"]["iteration"] == 1  # checkpointed on the stop
    resumed = runner.resume(run.path, ["run.time_limit_minutes=null"])
    assert json.loads((resumed.path / runner.STATUS_FILE).read_text())["status"] == "finished"
    assert [r["iteration"] for r in resumed.read_metrics()] == [1, 2, 3, 4]


def test_adapt_eval_cli_compares_meta_multitask_and_scratch_on_the_same_samples(tmp_path, capsys):
    run = runner.train(tiny(tmp_path))
    argv = ["adapt-eval", str(run.path), "--steps", "0..2", "--episodes", "2", "--seeds", "2"]
    argv += ["--num-tasks", "3", "--baselines"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| maml |" in out and "| multitask_finetune |" in out and "| scratch |" in out
    results = json.loads((run.path / "adapt_eval.json").read_text())
    assert set(results["methods"]) == {"maml", "multitask_finetune", "scratch"}
    assert len(results["tasks"]) == 3 and all(t["split"] == "test" for t in results["tasks"])
    for name, summary in results["methods"].items():
        assert summary["steps"] == [0, 1, 2]
        assert np.asarray(results["curves"][name]["returns"]).shape == (2, 3, 3)
        assert summary["improvement"][0]["mean"] == 0.0 and summary["return"][0]["n"] == 6
    # the baseline had the meta run's env-step budget and lives under the run dir
    assert results["env_steps"]["multitask"] == results["env_steps"]["run"] == 160
    assert Path(results["multitask_run"]).parent == run.path / "baselines"
    for name in ("adapt_eval.md", "plots/adapt_eval.png"):
        assert (run.path / name).stat().st_size > 0
    # the curves are also TensorBoard scalars beside the run's training curves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.path / "tensorboard" / "adapt_eval"))
    acc.Reload()
    curve = [(e.step, e.value) for e in acc.Scalars("adapt_eval/maml/return")]
    assert curve == [
        (k, pytest.approx(d["mean"], rel=1e-6))
        for k, d in zip([0, 1, 2], results["methods"]["maml"]["return"])
    ]
    # a second call keeps the first report: refused before anything is computed ...
    first = (run.path / "adapt_eval.json").read_bytes()
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run.path / "adapt_eval.json").read_bytes() == first
    # ... and under another name it reuses the baseline and reproduces every number
    assert cli.main([*argv, "--output", "again"]) == 0
    again = json.loads((run.path / "again.json").read_text())
    assert (run.path / "plots" / "again.png").stat().st_size > 0
    assert again["multitask_run"] == results["multitask_run"]
    assert len(list((run.path / "baselines").iterdir())) == 1
    assert again["curves"] == results["curves"]


def test_adapt_eval_of_an_rl2_run_is_its_per_episode_trial_curve(tmp_path):
    cfg = load_config(
        runner.TrainConfig,
        None,
        [
            "algo=rl2",
            "family=nav2d",
            "family_kwargs={max_episode_steps: 5}",
            "policy.kind=gru",
            "policy.d_model=8",
            "policy.encoder_hidden=16",
            "policy.n_layers=1",
            "rl2.num_envs=4",
            "rl2.num_minibatches=2",
            "rl2.episodes_per_trial=2",
            "rl2.total_steps=80",
            "eval.tasks=4",
            "logging.wandb=disabled",
            "logging.progress=false",
            f"run.root={tmp_path}",
        ],
    )
    run = runner.train(cfg)
    results = few_shot.adapt_evaluate(run, steps=1, episodes=1, seeds=1)
    assert list(results["methods"]) == ["rl2"]
    # one trial per task with the eval seed: exactly the trials `metarl eval` played
    evaluated = json.loads((run.path / "eval.json").read_text())["episode_return"]
    got = results["methods"]["rl2"]["return"]
    assert [g["mean"] for g in got] == pytest.approx([e["mean"] for e in evaluated], abs=1e-12)


def test_parse_steps_accepts_a_count_or_a_range():
    assert parse_steps("3") == [0, 1, 2, 3]
    assert parse_steps("1..2") == [1, 2]
    for bad in ("2..1", "x", "-1"):
        with pytest.raises(ValueError, match="steps"):
            parse_steps(bad)
