"""``metarl population``: a run directory end to end, and imports that stay below skills."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from metarl.population.cli import main


def test_population_command_writes_a_complete_run_directory(tmp_path, capsys):
    code = main(
        [
            f"run.root={tmp_path}",
            "iterations=3",
            "env.num_envs=2",
            "env.episode_len=5",
            "ppo.update_epochs=1",
            "ppo.num_minibatches=1",
            "analysis.every=2",
            "eval_episodes=2",
            "logging.progress=false",
            "pbt.members=2",
            "pbt.interval=2",
            "comm.enabled=true",
            "agents=[{kind: gru, d_model: 8}, {kind: s4d, d_model: 8, layer: {d_state: 4}}]",
        ]
    )
    assert code == 0
    (run,) = list(tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert "specialisation_index" in rows[1] and "diversity" in rows[1]
    assert "member1/learning_rate" in rows[0] and rows[1]["pbt/exploits"] == 1
    results = json.loads((run / "eval.json").read_text())
    assert results["episodes"] == 2 and "episodic_return" in results
    assert {p.name for p in (run / "plots").iterdir()} >= {"training.png", "emergence.png"}
    ckpt = torch.load(
        run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip(),
        weights_only=True,
    )
    assert ckpt["trainer"]["iteration"] == 3 and len(ckpt["trainer"]["members"]) == 2
    assert "run directory" in capsys.readouterr().out


def test_bad_config_key_is_a_config_error(tmp_path, capsys):
    assert main([f"run.root={tmp_path}", "algo=qmix"]) == 2
    assert "config error" in capsys.readouterr().err


def test_importing_the_population_does_not_import_skills_or_pettingzoo():
    code = (
        "import sys, metarl, metarl.population; "
        "bad = [m for m in ('skills', 'pettingzoo', 'mpe2') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
