"""PBT members as Ray actors (on a local Ray cluster the test starts): the same run as the local
population, exploit copying between actors, and a member whose actor dies survived."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parent))
from test_population_resume import assert_identical, config, final_state, rows  # noqa: E402

from metarl.backends import RayConfig  # noqa: E402
from metarl.population import train_population  # noqa: E402
from metarl.population.ray_members import RayMembers  # noqa: E402
from metarl.population.train import seeds_for  # noqa: E402

PBT = ("pbt.members=3", "pbt.interval=2", "pbt.window=2")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_population_on_ray_is_the_local_run(tmp_path):
    local, local_eval = train_population(config(tmp_path / "local", *PBT))
    remote, remote_eval = train_population(
        config(tmp_path / "ray", *PBT, "backend=ray", "ray.num_workers=3")
    )
    assert rows(remote) == rows(local)
    assert any("pbt/exploits" in r and r["pbt/exploits"] > 0 for r in remote.read_metrics())
    assert_identical(final_state(remote), final_state(local))
    assert json.loads((remote.path / "eval.json").read_text()) == json.loads(
        (local.path / "eval.json").read_text()
    )
    assert local_eval == remote_eval


def timeless(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "steps_per_second"}


def _rows(members: RayMembers, cfg, iterations: int, kill_at: int | None = None):
    out = []
    for it in range(1, iterations + 1):
        if it == kill_at:
            os.kill(members.pids()[1], signal.SIGKILL)
        seeds = [seeds_for(cfg.seed * 101 + m, it, cfg.env.num_envs) for m in range(3)]
        rows = members.train_iteration(seeds)
        out.append([json.dumps(timeless(r), sort_keys=True) for r in rows])
    return out


def test_a_member_whose_actor_dies_restarts_from_its_last_state(tmp_path):
    cfg = config(tmp_path, *PBT)
    undisturbed = RayMembers(cfg, RayConfig())
    expected = _rows(undisturbed, cfg, 4)
    undisturbed.close()
    members = RayMembers(cfg, RayConfig())
    got = _rows(members, cfg, 4, kill_at=3)
    assert members.failures == 1
    members.close()
    assert got == expected
