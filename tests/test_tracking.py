"""The Tracker writes TensorBoard event files beside metrics.jsonl, and a resume drops the events
logged after the checkpoint it resumed from, as it drops the rows."""

from __future__ import annotations

import pytest

from metarl import runner
from metarl.config import load_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TINY = [
    "algo=rl2",
    "family=bandit",
    "family_kwargs={k: 3, horizon: 5}",
    "policy.kind=gru",
    "policy.d_model=8",
    "policy.encoder_hidden=16",
    "policy.n_layers=1",
    "rl2.total_steps=120",
    "rl2.num_envs=4",
    "rl2.num_minibatches=2",
    "eval.tasks=2",
    "logging.wandb=disabled",
    "logging.progress=false",
    "run.checkpoint_every=2",
    "run.threads=1",
]


def scalars(run, tag):
    # as TensorBoard reads them: a SessionLog.START at the resume step hides later events
    acc = event_accumulator.EventAccumulator(
        str(run.path / "tensorboard"), purge_orphaned_data=True
    )
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_event_files_hold_the_metrics_and_a_resume_drops_the_rewound_ones(tmp_path):
    cfg = load_config(runner.TrainConfig, None, [*TINY, f"run.root={tmp_path}", "run.stop_after=3"])
    run = runner.train(cfg)
    rows = run.read_metrics()
    assert [s for s, _ in scalars(run, "episodic_return")] == [r["step"] for r in rows]
    # stopped after iteration 3; iteration 3 is checkpointed on the stop, so pretend the run was
    # killed before that: delete the newest checkpoint, the resume rewinds to iteration 2
    newest = run.checkpoints()[-1]
    newest.unlink()
    (run.checkpoint_dir / "latest").unlink(missing_ok=True)
    resumed = runner.resume(run.path, ["run.stop_after=null"])
    steps = [s for s, _ in scalars(resumed, "episodic_return")]
    assert steps == [r["step"] for r in resumed.read_metrics()]
    assert len(steps) == len(set(steps)) == 6  # 120 steps / 20 per iteration, none twice
    returns = dict(scalars(resumed, "episodic_return"))
    for r in resumed.read_metrics():
        assert returns[r["step"]] == pytest.approx(r["episodic_return"], rel=1e-6)


def test_tensorboard_off(tmp_path):
    cfg = load_config(
        runner.TrainConfig,
        None,
        [*TINY, f"run.root={tmp_path}", "rl2.total_steps=20", "logging.tensorboard=false"],
    )
    run = runner.train(cfg)
    assert not (run.path / "tensorboard").exists()
