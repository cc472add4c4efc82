"""The experiment runner: exact resume (in-process and after SIGKILL), NaN stops, CLI errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metarl import cli, runner
from metarl.config import ConfigError, load_config
from metarl.rl2 import RL2Trainer
from metarl.run_dir import RunDir

TINY = [
    "family_kwargs={k: 3, horizon: 10}",
    "policy.kind=s4d",
    "policy.d_model=8",
    "policy.encoder_hidden=16",
    "policy.n_layers=1",
    "rl2.num_envs=4",
    "rl2.num_minibatches=2",
    "rl2.update_epochs=2",
    "eval.tasks=8",
    "logging.wandb=disabled",
    "logging.progress=false",
    "run.checkpoint_every=2",
    "run.threads=1",  # the subprocess must match the in-process runs bit for bit
]
TIMING = {"steps_per_second"}


def tiny(tmp_path: Path, *extra: str) -> runner.TrainConfig:
    return load_config(
        runner.TrainConfig, None, [*TINY, f"run.root={tmp_path}", "rl2.total_steps=400", *extra]
    )


def learning_rows(run: RunDir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in run.read_metrics()]


def final_params(run: RunDir) -> dict[str, torch.Tensor]:
    return run.load_checkpoint("latest")["trainer"]["policy"]


def assert_same_run(a: RunDir, b: RunDir, iterations: int) -> None:
    rows_a, rows_b = learning_rows(a), learning_rows(b)
    assert len(rows_a) == len(rows_b) == iterations
    assert rows_a == rows_b
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert (
        json.loads((a.path / "eval.json").read_text())["episode_return"]
        == json.loads((b.path / "eval.json").read_text())["episode_return"]
    )


def test_resumed_run_matches_uninterrupted_run_exactly(tmp_path):
    full = runner.train(tiny(tmp_path / "full"))
    part = runner.train(tiny(tmp_path / "part", "run.stop_after=5"))
    status = json.loads((part.path / runner.STATUS_FILE).read_text())
    assert status["status"] == "stopped" and status["iteration"] == 5
    # a stop is checkpointed where it happened (iteration 5, between the every-2 checkpoints):
    # the resume keeps every row and loses no work
    assert len(part.read_metrics()) == 5
    assert part.load_checkpoint("latest")["trainer"]["iteration"] == 5
    resumed = runner.resume(part.path, ["run.stop_after=null"])
    assert resumed.path == part.path
    assert_same_run(full, resumed, 10)
    assert (resumed.plot_dir / "training.png").stat().st_size > 0


def test_sigkilled_run_resumes_to_the_same_final_metrics(tmp_path):
    # 50 iterations: the kill lands after the third checkpoint, long before the end
    full = runner.train(tiny(tmp_path / "full", "run.checkpoint_every=1", "rl2.total_steps=2000"))
    root = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "metarl.cli",
        "train",
        *TINY,
        f"run.root={root}",
        "rl2.total_steps=2000",
        "run.checkpoint_every=1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    run_path = None
    while time.monotonic() < deadline:
        runs = list(root.glob("*/checkpoints/step_*.pt")) if root.exists() else []
        if len(runs) >= 3:
            run_path = runs[0].parent.parent
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    assert run_path is not None, "the training process wrote no checkpoints in 120 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    status = json.loads((run_path / runner.STATUS_FILE).read_text())
    assert status["status"] == "running" and status["iteration"] < 50
    out = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "resume", str(run_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "finished" in out.stdout
    assert_same_run(full, RunDir.open(run_path), 50)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_marks_the_run_interrupted_and_resume_loses_nothing(tmp_path, sig):
    full = runner.train(tiny(tmp_path / "full", "rl2.total_steps=2000"))
    root = tmp_path / "signalled"
    cmd = [sys.executable, "-m", "metarl.cli", "train", *TINY, f"run.root={root}"]
    cmd += ["rl2.total_steps=2000", "run.checkpoint_every=1000"]  # no checkpoint but the stop's
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = list(root.glob("*/metrics.jsonl")) if root.exists() else []
        if rows and len(rows[0].read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resume with" in out and "Traceback" not in err
    run = RunDir.open(rows[0].parent)
    status = json.loads((run.path / runner.STATUS_FILE).read_text())
    assert status["status"] == "interrupted" and 3 <= status["iteration"] < 50
    assert run.load_checkpoint("latest")["trainer"]["iteration"] == status["iteration"]
    assert len(run.read_metrics()) == status["iteration"]
    resumed = runner.resume(run.path)
    assert_same_run(full, resumed, 50)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = RL2Trainer.step

    def poisoned(self):
        if self.iteration == 4:  # corrupt a weight: the next loss is NaN
            with torch.no_grad():
                self.policy.value.weight.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(RL2Trainer, "step", poisoned)
    cfg = tiny(tmp_path)
    with pytest.raises(runner.TrainingDiverged, match=r"loss is not finite.*last good checkpoint"):
        runner.train(cfg)
    run = RunDir.open(next(tmp_path.iterdir()))
    status = json.loads((run.path / runner.STATUS_FILE).read_text())
    assert status["status"] == "diverged" and status["iteration"] == 4
    assert "not finite" in status["message"]
    state = run.load_checkpoint("latest")
    assert state["trainer"]["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["trainer"]["policy"].values())
    assert len(run.read_metrics()) == 4


def test_cli_train_exit_code_and_message_on_nan(tmp_path, monkeypatch, capsys):
    def broken(self):
        raise FloatingPointError("RL²: value_loss is not finite at iteration 1; stopping")

    monkeypatch.setattr(RL2Trainer, "step", broken)
    code = cli.main(["train", *TINY, f"run.root={tmp_path}", "rl2.total_steps=400"])
    assert code == cli.EXIT_DIVERGED
    assert "value_loss is not finite" in capsys.readouterr().err


def test_cli_mistyped_key_names_the_closest_valid_key(tmp_path, capsys):
    code = cli.main(["train", f"run.root={tmp_path}", "rl2.learning_rat=1e-3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rl2.learning_rat" in err and "learning_rate" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no run directory was made


def test_cli_config_prints_resolved_yaml(capsys):
    assert cli.main(["config", "family=nav2d", "rl2.episodes_per_trial=2"]) == 0
    out = capsys.readouterr().out
    assert "family: nav2d" in out and "episodes_per_trial: 2" in out


def test_cli_eval_reports_bandit_regret_against_classic_players(tmp_path, capsys):
    run = runner.train(tiny(tmp_path))
    assert cli.main(["eval", str(run.path), "eval.tasks=12"]) == 0
    out = capsys.readouterr().out
    for name in ("policy", "random", "ucb1", "thompson"):
        assert name in out
    results = json.loads((run.path / "eval.json").read_text())
    assert results["tasks"] == 12 and "success" not in results  # bandits report no success
    assert results["regret"]["thompson"]["mean"] < results["regret"]["random"]["mean"]
    assert (run.plot_dir / "eval.png").stat().st_size > 0


def test_resume_refuses_overrides_that_change_the_experiment(tmp_path):
    run = runner.train(tiny(tmp_path, "run.stop_after=1"))
    with pytest.raises(ValueError, match="only run.\\* and logging.\\*"):
        runner.resume(run.path, ["rl2.learning_rate=1.0"])


def test_unknown_algo_is_a_config_error():
    with pytest.raises(ConfigError, match="algo"):
        load_config(runner.TrainConfig, None, ["algo=maml2"])


def test_wandb_offline_writes_a_local_run(tmp_path):
    pytest.importorskip("wandb")
    run = runner.train(tiny(tmp_path, "logging.wandb=offline", "rl2.total_steps=80"))
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].rglob("*.wandb"))
