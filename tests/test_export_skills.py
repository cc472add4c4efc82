"""``metarl export-skills``: the policies of train, sequence and population runs into a skill
library, each with its observation layout and action space; user errors are one line, exit 2,
and nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import runner
from metarl.config import load_config
from metarl.run_dir import RunDir
from skills import SkillLibrary, SkillLibraryError
from skills.export import LAYOUT_FILE, export_skills, main

QUIET = ["logging.wandb=disabled", "logging.progress=false", "run.threads=1"]
SMALL_POLICY = ["policy.kind=gru", "policy.d_model=8", "policy.n_layers=1",
                "policy.encoder_hidden=8"]  # fmt: skip


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    """A PPO run on nav2d: 80 env steps."""
    root = tmp_path_factory.mktemp("train")
    cfg = load_config(
        runner.TrainConfig,
        None,
        [*SMALL_POLICY, *QUIET, f"run.root={root}", "algo=ppo", "family=nav2d",
         "family_kwargs={max_episode_steps: 10}", "ppo.total_steps=80", "ppo.num_envs=2",
         "ppo.num_steps=20", "ppo.num_minibatches=1", "eval.tasks=2"],
    )  # fmt: skip
    return runner.train(cfg).path


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory) -> Path:
    """A continual PPO run through two nav2d quadrants (the curriculum appends a task one-hot)."""
    from continual.config import SequenceConfig
    from continual.sequence import run_sequence

    root = tmp_path_factory.mktemp("sequence")
    cfg = load_config(
        SequenceConfig,
        None,
        [*SMALL_POLICY, *QUIET, f"run.root={root}", "curriculum=nav2d_quadrants",
         "max_stages=2", "stage_steps=80", "policy.box_head=tanh", "ppo.num_envs=2",
         "ppo.num_steps=20", "ppo.num_minibatches=1", "ppo.update_epochs=1",
         "eval.every_iterations=2", "eval.episodes=1", "run.checkpoint_every=0"],
    )  # fmt: skip
    return run_sequence(cfg).run.path


@pytest.fixture(scope="module")
def population_run(tmp_path_factory) -> Path:
    """Two PBT members of three agents (a GRU and an S4D network, ids appended), 2 iterations."""
    from metarl.population import PopulationConfig, train_population

    root = tmp_path_factory.mktemp("population")
    cfg = load_config(
        PopulationConfig,
        None,
        [f"run.root={root}", "iterations=2", "env.num_envs=2", "env.episode_len=5",
         "ppo.update_epochs=1", "eval_episodes=1", "logging.progress=false",
         "critic.d_model=8", "pbt.members=2", "pbt.interval=10",
         "agents=[{kind: gru, d_model: 8}, {kind: s4d, d_model: 8, layer: {d_state: 4}}]"],
    )  # fmt: skip
    run, _ = train_population(cfg)
    return run.path


def _same(params: dict, reference: dict) -> None:
    assert params.keys() == reference.keys()
    for k, v in params.items():
        assert torch.equal(v, reference[k]), k


def test_a_train_run_exports_its_policy_with_the_env_layout(train_run, tmp_path):
    path, names = export_skills(train_run, tmp_path / "lib")
    assert names == [f"{train_run.name}/policy"]
    lib = SkillLibrary.open(path)
    info = lib.info(names[0])
    assert info.metadata["obs_layout"] == [{"name": "env", "size": 2}]
    assert info.metadata["action_space"]["type"] == "box"
    assert info.metadata["action_space"]["shape"] == [2]
    assert info.metadata["in_context"] is False and info.metadata["algo"] == "ppo"
    assert info.metadata["provenance"]["run_kind"] == "train"
    _same(lib.params(names[0]), RunDir.open(train_run).load_checkpoint()["trainer"]["policy"])
    action, _ = lib.get(names[0]).act(np.zeros(2, np.float32))
    assert action.shape == (2,)


def test_a_sequence_run_exports_the_learner_policy_and_a_recorded_layout(sequence_run, tmp_path):
    record = RunDir.open(sequence_run).load_checkpoint()["policy"]
    obs = json.loads(record["spec"])["observation"]["shape"]
    assert obs == [6]  # nav2d's 2 numbers + a one-hot over the curriculum's 4 tasks
    # the run recorded its layout (continual writes observation_layout.json): every skill gets it
    layout = [
        {"name": "env", "size": 2},
        {"name": "task_onehot", "size": 4,
         "index_of": ["north_east", "south_west", "north_west", "south_east"]},
    ]  # fmt: skip
    assert json.loads((sequence_run / LAYOUT_FILE).read_text()) == layout
    path, names = export_skills(sequence_run, tmp_path / "lib")
    info = SkillLibrary.open(path).info(names[0])
    assert names == [f"{sequence_run.name}/final"]
    assert info.metadata["obs_layout"] == layout and "obs_layout_note" not in info.metadata
    _same(SkillLibrary.open(path).params(names[0]), record["state"])

    recorded = (sequence_run / LAYOUT_FILE).read_text()
    try:
        # without the record (a run from before it existed): one block and a note
        (sequence_run / LAYOUT_FILE).unlink()
        _, names = export_skills(sequence_run, tmp_path / "lib", prefix="unrecorded")
        info = SkillLibrary.open(tmp_path / "lib").info(names[0])
        assert info.metadata["obs_layout"] == [{"name": "observation", "size": 6}]
        assert "one-hot" in info.metadata["obs_layout_note"]
        # a recorded layout must add up
        (sequence_run / LAYOUT_FILE).write_text(json.dumps(layout[:1]))
        with pytest.raises(SkillLibraryError, match="add up to 2, the policy reads 6"):
            export_skills(sequence_run, tmp_path / "lib", prefix="bad")
    finally:
        (sequence_run / LAYOUT_FILE).write_text(recorded)


def test_a_population_run_exports_the_fittest_members_agents(population_run, tmp_path):
    path, names = export_skills(population_run, tmp_path / "lib")
    assert names == [f"{population_run.name}/agent{g}" for g in range(3)]
    lib = SkillLibrary.open(path)
    state = RunDir.open(population_run).load_checkpoint()["trainer"]
    for g, name in enumerate(names):
        info = lib.info(name)
        layout = info.metadata["obs_layout"]
        assert [b["name"] for b in layout] == ["env", "agent_onehot"]
        assert layout[1]["index_of"] == ["agent_0", "agent_1", "agent_2"]
        assert info.metadata["action_space"] == {"type": "discrete", "n": 5}
        assert info.metadata["slots"] == [g]
        member = state["members"][info.metadata["member"]]["nets"][g]
        body = {k.removeprefix("body."): v for k, v in member.items() if k.startswith("body.")}
        _same(lib.params(name), body)
        obs = np.zeros(sum(b["size"] for b in layout), np.float32)
        action, _ = lib.get(name).act(obs)
        assert 0 <= int(action) < 5


def test_existing_names_are_refused_unless_overwrite(train_run, tmp_path):
    lib_path = tmp_path / "lib"
    export_skills(train_run, lib_path)
    generation = SkillLibrary.open(lib_path).generation
    with pytest.raises(SkillLibraryError, match="--overwrite"):
        export_skills(train_run, lib_path)
    assert SkillLibrary.open(lib_path).generation == generation  # nothing written
    export_skills(train_run, lib_path, overwrite=True)
    assert SkillLibrary.open(lib_path).list() == [f"{train_run.name}/policy"]


# -- the command, as a user runs it ---------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metarl.cli", "export-skills", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_exports_a_run(train_run, tmp_path):
    out = _cli(str(train_run), "--library", str(tmp_path / "lib"))
    assert out.returncode == 0, out.stderr
    assert f"exported {train_run.name}/policy" in out.stdout
    assert SkillLibrary.open(tmp_path / "lib").list() == [f"{train_run.name}/policy"]


def _user_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl export-skills: "), out.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _fake_run(train_run: Path, where: Path, config: str | None = None) -> Path:
    """A run directory with the train run's files but no checkpoint (and ``config``)."""
    where.mkdir()
    for name in ("meta.json", "metrics.jsonl", "config.yaml"):
        (where / name).write_bytes((train_run / name).read_bytes())
    if config is not None:
        (where / "config.yaml").write_text(config)
    (where / "checkpoints").mkdir()
    return where


# One subprocess per class of user error (the run, the library path, the names); the variants
# of each class run in-process through the same ``main``.
def test_cli_refuses_a_path_that_is_not_an_exportable_run(tmp_path):
    _user_error(_cli(str(tmp_path / "nope"), "--library", str(tmp_path / "lib")), "does not exist")
    assert not (tmp_path / "lib").exists()


def test_cli_refuses_a_library_path_that_is_a_file(train_run, tmp_path):
    (tmp_path / "file").write_text("x")
    _user_error(_cli(str(train_run), "--library", str(tmp_path / "file")), "is a file")


def test_cli_refuses_existing_names(train_run, tmp_path):
    export_skills(train_run, tmp_path / "lib")
    _user_error(_cli(str(train_run), "--library", str(tmp_path / "lib")), "--overwrite")


def _main_error(capsys, args: list[str], *words: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl export-skills: "), err
    for w in words:
        assert w in err[0], err[0]


@pytest.mark.parametrize(
    "case, words",
    [
        ("folder", ["not a run directory"]),
        ("unknown kind", ["not a run of metarl train, sequence or population"]),
        ("no checkpoint", ["no checkpoints"]),
    ],
)
def test_runs_that_cannot_be_exported_are_one_line_errors(train_run, tmp_path, capsys, case,
                                                          words):  # fmt: skip
    if case == "folder":
        (tmp_path / "run").mkdir()
        run = tmp_path / "run"
    else:
        config = "something: else\n" if case == "unknown kind" else None
        run = _fake_run(train_run, tmp_path / "run", config)
    _main_error(capsys, [str(run), "--library", str(tmp_path / "lib")], *words)
    assert not (tmp_path / "lib").exists()


def test_a_foreign_folder_is_not_taken_for_a_library(train_run, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    _main_error(capsys, [str(train_run), "--library", str(tmp_path / "mine")], "neither")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
