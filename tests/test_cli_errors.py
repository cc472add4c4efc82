"""Every class of user error, through the real ``metarl`` command in a subprocess: one clear line
on stderr, exit code 2, and nothing written (no run directory is created)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metarl.run_dir import RunDir

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def metarl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "metarl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_user_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        # a first argument shaped like key=value is an override, not a config file name
        (("sequence", "curriculum=/no/such/curriculum.yaml"), ("curriculum file not found",)),
        # family keyword arguments the family does not take
        (
            ("train", str(CONFIGS / "quickstart.yaml"), "family=procgen:coinrun"),
            ("does not take horizon, k", "it takes: distribution_mode"),
        ),
        # negative / zero sizes, steps and learning rates
        (("train", str(CONFIGS / "quickstart.yaml"), "rl2.total_steps=-5"), ("total_steps",)),
        (("train", str(CONFIGS / "quickstart.yaml"), "rl2.learning_rate=-1"), ("learning_rate",)),
        (("sequence", str(CONFIGS / "sequence_quick.yaml"), "ppo.num_envs=0"), ("num_envs",)),
        (("train", str(CONFIGS / "maml_nav2d.yaml"), "policy.d_model=0"), ("d_model",)),
    ],
    ids=["override-first", "family-kwargs", "negative-steps", "negative-lr", "zero-envs",
         "zero-width"],
)
def test_config_errors_write_nothing(tmp_path, args, fragments):
    root = tmp_path / "runs"
    out = metarl(*args, f"run.root={root}", cwd=tmp_path)
    assert_user_error(out, *fragments)
    assert not root.exists() or not any(root.iterdir())


def test_missing_run_directory_is_one_line_for_every_command(tmp_path):
    missing = str(tmp_path / "nope")
    for command in (["resume", missing], ["eval", missing], ["adapt-eval", missing],
                    ["sequence", "--resume", missing]):
        assert_user_error(metarl(*command, cwd=tmp_path), "not a run directory")


def test_train_commands_refuse_a_sequence_run_and_say_what_takes_it(tmp_path):
    run = RunDir.create(tmp_path, "seq", {"curriculum": "nav2d_quadrants", "learner": "maml"}, 1)
    for command in ("eval", "adapt-eval", "resume"):
        out = metarl(command, str(run.path), cwd=tmp_path)
        assert_user_error(out, "is a `metarl sequence` run", "results.json")
    pop = RunDir.create(tmp_path, "pop", {"algo": "mappo", "agents": []}, 1)
    assert_user_error(metarl("eval", str(pop.path), cwd=tmp_path), "`metarl population` run")


def test_adapt_eval_bad_numbers_are_argument_errors(tmp_path):
    for flag, value in (("--inner-lr", "-1"), ("--seeds", "0"), ("--num-tasks", "-3"),
                        ("--episodes", "0"), ("--inner-lr", "nan")):
        out = metarl("adapt-eval", str(tmp_path), flag, value, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"argument {flag}: must be > 0" in out.stderr
