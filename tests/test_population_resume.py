"""A stopped or killed population run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metarl.config import load_config
from metarl.population import PopulationConfig, resume_population, train_population
from metarl.population.cli import main
from metarl.population.train import PopulationTrainer
from metarl.run_dir import RunDir

TIMING = {"steps_per_second"}
ITERATIONS = 6


def config(root: Path, *overrides: str) -> PopulationConfig:
    return load_config(
        PopulationConfig,
        None,
        [
            f"run.root={root}",
            f"iterations={ITERATIONS}",
            "env.num_envs=2",
            "env.episode_len=5",
            # resources close to the spawn area, so roles are taken and the emergence windows
            # (which span the interruption) matter
            "env.kwargs={ring: 0.3, cover_radius: 0.12, spawn: 0.3}",
            "ppo.update_epochs=2",
            "analysis.every=2",
            "analysis.window=3",
            "eval_episodes=2",
            "run.checkpoint_every=2",
            "logging.progress=false",
            "critic.d_model=8",
            "agents=[{kind: gru, d_model: 8}, {kind: s4d, d_model: 8, layer: {d_state: 4}}]",
            *overrides,
        ],
    )


def rows(run: RunDir) -> list[str]:
    """Metrics rows without timing columns, as JSON text (so NaN compares equal to NaN)."""
    return [
        json.dumps({k: v for k, v in r.items() if k not in TIMING}, sort_keys=True)
        for r in run.read_metrics()
    ]


def assert_identical(a, b, where: str = "state") -> None:
    """Bitwise equality of two (nested) checkpoint states."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def final_state(run: RunDir) -> dict:
    state = run.load_checkpoint("latest")
    state.pop("rng")  # the global RNG state also advances in the final evaluation
    return state


PBT = ("pbt.members=3", "pbt.interval=2", "pbt.window=2")
SETTINGS = {
    "pbt": PBT,
    "pbt-comm-ippo": (*PBT, "comm.enabled=true", "algo=ippo"),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(tmp_path, name):
    overrides = SETTINGS[name]
    straight, _ = train_population(config(tmp_path / "straight", *overrides))

    stopped, results = train_population(
        config(tmp_path / "stopped", *overrides, "run.stop_after=3")
    )
    assert results is None
    assert json.loads((stopped.path / "status.json").read_text())["status"] == "stopped"
    assert len(stopped.read_metrics()) == 3
    resumed, results = resume_population(stopped.path)
    assert results is not None

    assert rows(resumed) == rows(straight)
    assert any(r.get("specialisation_index", 0) > 0 for r in resumed.read_metrics()[3:])
    assert_identical(final_state(resumed), final_state(straight))
    assert json.loads((resumed.path / "eval.json").read_text()) == json.loads(
        (straight.path / "eval.json").read_text()
    )


def crash(cfg: PopulationConfig, monkeypatch, after: int) -> RunDir:
    """Train ``cfg`` until iteration ``after`` is logged, then die as a killed process would."""
    step = PopulationTrainer.step

    def step_or_die(self):
        if self.iteration == after:
            raise KeyboardInterrupt("killed")
        return step(self)

    with monkeypatch.context() as m:
        m.setattr(PopulationTrainer, "step", step_or_die)
        with pytest.raises(KeyboardInterrupt):
            train_population(cfg)
    (run,) = [RunDir(p) for p in Path(cfg.run.root).iterdir()]
    return run


def test_resume_after_a_crash_drops_the_rows_logged_after_the_last_checkpoint(
    tmp_path, monkeypatch
):
    straight, _ = train_population(config(tmp_path / "straight", *PBT))
    # iteration 3 is logged but not checkpointed (every 2)
    crashed = crash(config(tmp_path / "crashed", *PBT), monkeypatch, after=3)
    assert [r["iteration"] for r in crashed.read_metrics()] == [1, 2, 3]
    assert crashed.load_checkpoint("latest")["trainer"]["iteration"] == 2

    resumed, _ = resume_population(crashed.path)
    assert [r["iteration"] for r in resumed.read_metrics()] == list(range(1, ITERATIONS + 1))
    assert rows(resumed) == rows(straight)
    assert_identical(final_state(resumed), final_state(straight))


def test_resume_before_the_first_checkpoint_starts_over(tmp_path, monkeypatch):
    straight, _ = train_population(config(tmp_path / "straight"))
    crashed = crash(config(tmp_path / "crashed", "run.checkpoint_every=10"), monkeypatch, after=1)
    assert len(crashed.read_metrics()) == 1 and not crashed.checkpoints()
    resumed, _ = resume_population(crashed.path, ["run.checkpoint_every=2"])
    assert rows(resumed) == rows(straight)
    assert_identical(final_state(resumed), final_state(straight))


def test_resume_refuses_overrides_that_change_the_experiment(tmp_path):
    run, _ = train_population(config(tmp_path, "run.stop_after=1"))
    with pytest.raises(ValueError, match="only run.* and logging.*"):
        resume_population(run.path, ["ppo.learning_rate=0.1"])


def test_population_command_resumes_a_stopped_run(tmp_path, capsys):
    args = [
        f"run.root={tmp_path}",
        "iterations=3",
        "env.num_envs=2",
        "env.episode_len=4",
        "ppo.update_epochs=1",
        "eval_episodes=2",
        "logging.progress=false",
        "run.stop_after=2",
    ]
    assert main(args) == 0
    assert "resume with: metarl population --resume" in capsys.readouterr().out
    (run,) = list(tmp_path.iterdir())
    assert main(["--resume", str(run), "algo=ippo"]) == 2
    assert "only run.* and logging.*" in capsys.readouterr().err
    assert main(["--resume", str(run), "run.stop_after=null"]) == 0
    assert "evaluation over 2 episodes" in capsys.readouterr().out
    assert [r["iteration"] for r in RunDir(run).read_metrics()] == [1, 2, 3]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
