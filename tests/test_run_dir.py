"""Run directories: layout, metadata, metrics log, atomic weights-only checkpoints, RNG state."""

# The legacy global NumPy RNG is exactly what capture/restore_rng_state must cover.
# ruff: noqa: NPY002

from __future__ import annotations

import importlib.util
import json
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from metarl.run_dir import (
    CheckpointError,
    RunDir,
    RunDirError,
    capture_rng_state,
    restore_rng_state,
)

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@dataclass
class Sub:
    lr: float = 1e-3
    """learning rate"""


@dataclass
class Cfg:
    seed: int = 0
    """random seed"""
    sub: Sub = field(default_factory=Sub)
    """nested section"""


SIDE_EFFECTS: list[str] = []


class Payload:
    """An arbitrary pickled object: a weights_only load must refuse to rebuild it."""

    def __setstate__(self, state):
        SIDE_EFFECTS.append("unpickled")
        self.__dict__.update(state)


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir.create(tmp_path, "exp", Cfg(seed=4, sub=Sub(lr=0.5)), seed=4)


def test_create_makes_layout_and_open_reopens(tmp_path, run):
    assert run.path.parent == tmp_path and run.path.name.startswith("exp-")
    assert sorted(p.name for p in run.path.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "plots",
    ]
    other = RunDir.create(tmp_path, "exp", Cfg(), seed=0)
    assert other.path != run.path  # same name, distinct directories
    unnamed = RunDir.create(tmp_path, None, None, seed=0)
    assert unnamed.path.name[:2] == "20"  # a timestamp
    reopened = RunDir.open(run.path)
    assert reopened.load_config(Cfg) == Cfg(seed=4, sub=Sub(lr=0.5))


def test_open_names_missing_files(run, tmp_path):
    (run.path / "meta.json").unlink()
    (run.path / "metrics.jsonl").unlink()
    with pytest.raises(RunDirError, match="lacks meta.json, metrics.jsonl"):
        RunDir.open(run.path)
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir.open(tmp_path / "nope")


def test_meta_records_provenance(run):
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["seed"] == 4
    assert meta["torch"] == torch.__version__
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["command"][1:] == sys.argv
    for key in ("git_commit", "git_dirty", "hostname", "start_time"):
        assert key in meta
    # The repo this code runs from is a git checkout here.
    assert meta["git_commit"] is not None and len(meta["git_commit"]) == 40
    assert isinstance(meta["git_dirty"], bool)


def test_metrics_append_and_truncated_last_line(run):
    run.log_metrics(0, loss=1.5, kl=torch.tensor(0.25))
    run.log_metrics(10, loss=np.float32(0.5), note="ok")
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 20, "lo')  # killed mid-write
    assert run.read_metrics() == [
        {"step": 0, "loss": 1.5, "kl": 0.25},
        {"step": 10, "loss": 0.5, "note": "ok"},
    ]
    # A resumed run drops the partial line and keeps appending cleanly.
    resumed = RunDir.open(run.path)
    resumed.log_metrics(20, loss=0.25)
    assert [r["step"] for r in resumed.read_metrics()] == [0, 10, 20]
    with pytest.raises(TypeError, match="metric 'bad' must be a scalar"):
        run.log_metrics(30, bad=[1, 2])


def test_corrupt_middle_metrics_line_is_an_error(run):
    run.metrics_path.write_text('{"step": 0}\ngarbage\n{"step": 1}\n')
    with pytest.raises(RunDirError, match="line 2"):
        run.read_metrics()


def _train_step(model, opt, gen):
    # Draws from every RNG the state covers, so a missed one changes the result.
    x = torch.randn(8, 4) + torch.randn(8, 4, generator=gen)
    x = x + float(np.random.rand()) + random.random()
    loss = (model(x) - torch.rand(8, 2)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def _make():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def test_checkpoint_resume_is_bit_identical(run):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    gen = torch.Generator().manual_seed(1)
    model, opt = _make()
    for _ in range(3):
        _train_step(model, opt, gen)
    state = {
        "step": 3,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": capture_rng_state({"env": gen}),
    }
    run.save_checkpoint(3, state)
    expected_losses = [_train_step(model, opt, gen) for _ in range(3)]
    expected_params = [p.detach().clone() for p in model.parameters()]
    expected_draws = (
        random.gauss(0, 1),  # consumes the cached gaussian
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.rand(3, generator=gen),
    )

    # Scramble every RNG, then resume from the checkpoint into fresh objects.
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    gen2 = torch.Generator().manual_seed(123)
    model2, opt2 = _make()
    loaded = RunDir.open(run.path).load_checkpoint("latest")
    assert loaded["step"] == 3
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    restore_rng_state(loaded["rng"], {"env": gen2})
    losses = [_train_step(model2, opt2, gen2) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(losses, expected_losses))
    assert all(torch.equal(a, b) for a, b in zip(model2.parameters(), expected_params))
    draws = (
        random.gauss(0, 1),
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.rand(3, generator=gen2),
    )
    assert draws[:3] == expected_draws[:3]
    assert torch.equal(draws[3], expected_draws[3]) and torch.equal(draws[4], expected_draws[4])


def test_restore_needs_every_named_generator():
    state = capture_rng_state()
    with pytest.raises(KeyError, match="'env'"):
        restore_rng_state(state, {"env": torch.Generator()})


def test_checkpoint_files_latest_and_no_temp_files(run):
    path = run.save_checkpoint(7, {"w": torch.ones(3)})
    assert path.name == "step_000000007.pt"
    assert (run.checkpoint_dir / "latest").read_text().strip() == "step_000000007.pt"
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["latest", "step_000000007.pt"]
    assert torch.equal(run.load_checkpoint(path)["w"], torch.ones(3))
    assert torch.equal(run.load_checkpoint("step_000000007.pt")["w"], torch.ones(3))


def test_truncated_checkpoint_names_file_and_latest_falls_back(run):
    run.save_checkpoint(1, {"w": torch.full((100,), 1.0)})
    newest = run.save_checkpoint(2, {"w": torch.full((100,), 2.0)})
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="step_000000002.pt"):
        run.load_checkpoint(newest)
    with pytest.warns(UserWarning, match="step_000000002.pt"):
        state = run.load_checkpoint("latest")
    assert torch.equal(state["w"], torch.full((100,), 1.0))


def test_no_readable_checkpoint_is_an_error(run):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        run.load_checkpoint()
    p = run.save_checkpoint(1, {"w": torch.zeros(2)})
    p.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        run.load_checkpoint()


def test_keep_prunes_old_checkpoints(run):
    for step in range(5):
        run.save_checkpoint(step * 10, {"step": step}, keep=2)
    assert [p.name for p in run.checkpoints()] == ["step_000000030.pt", "step_000000040.pt"]
    with pytest.raises(ValueError, match="keep"):
        run.save_checkpoint(50, {}, keep=0)


def test_loading_refuses_pickled_objects(run):
    SIDE_EFFECTS.clear()
    evil = run.checkpoint_dir / "step_000000099.pt"
    torch.save({"payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="step_000000099.pt") as err:
        run.load_checkpoint(evil)
    assert "weights_only=True" in str(err.value) and "Payload" in str(err.value)
    assert SIDE_EFFECTS == []  # the object was never rebuilt


def test_saving_rejects_what_loading_would_refuse(run):
    with pytest.raises(TypeError, match=r"state\['rng'\]\['np'\] is a ndarray"):
        run.save_checkpoint(0, {"rng": {"np": np.zeros(3)}})
    assert run.checkpoints() == []


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed")
def test_plot_metrics_writes_png(run):
    for step in range(5):
        run.log_metrics(step, loss=1.0 / (step + 1), ret=float(step))
    out = run.plot_metrics(["loss", "ret"], "curves.png")
    assert out == run.plot_dir / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError, match="nope"):
        run.plot_metrics(["nope"])


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="matplotlib is installed")
def test_plot_metrics_without_matplotlib_says_how_to_install(run):
    with pytest.raises(ImportError, match="pip install matplotlib"):
        run.plot_metrics(["loss"])
