"""The Ray backend on a local Ray cluster (started here, several worker processes): the same
trajectories and training as the local backend for the same seeds, and a killed worker survived.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time

import gymnasium as gym
import pytest
import torch

ray = pytest.importorskip("ray")

from metarl.backends import LocalCollector, RayCollector, RayConfig, WorkerLost  # noqa: E402
from metarl.meta import MetaConfig, MetaTrainer  # noqa: E402
from metarl.rl2 import RL2Config, RL2Trainer  # noqa: E402
from metarl.runner import PolicyConfig  # noqa: E402
from metarl.tasks import make_family  # noqa: E402
from metarl.tasks.nav2d import Nav2DFamily  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import tests/


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class _Slow(gym.Wrapper):
    def step(self, action):
        time.sleep(0.004)
        return self.env.step(action)


class SlowNav2D(Nav2DFamily):
    """nav2d whose every step costs 4 ms, so a collection lasts long enough to be interrupted."""

    def _make_task_env(self, task):
        return _Slow(super()._make_task_env(task))


def _policy(family, dtype=torch.float64, in_context=False, seed=0):
    torch.manual_seed(seed)
    cfg = PolicyConfig(kind="gru", d_model=16, n_layers=1, encoder_hidden=16)
    return cfg.build(family.observation_space, family.action_space, in_context).to(dtype)


def _same(a, b, exact):
    for name, x in a.as_dict().items():
        if isinstance(x, torch.Tensor):
            y = getattr(b, name)
            if exact or not x.is_floating_point():
                assert torch.equal(x, y), name
            else:
                torch.testing.assert_close(x, y, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("workers", [1, 3])
def test_ray_collections_equal_local_ones(workers):
    family = make_family("nav2d", max_episode_steps=25)
    policy, tasks = _policy(family), family.sample(5, split="train", seed=2)
    stacked = {
        k: torch.stack([v.detach() * (1 + 0.1 * i) for i in range(5)])
        for k, v in policy.named_parameters()
    }
    local = LocalCollector(policy, family)
    with RayCollector(policy, family, RayConfig(num_workers=workers)) as remote:
        for params, exact in ((stacked, True), (None, False)):
            g_local, g_ray = (torch.Generator().manual_seed(3) for _ in range(2))
            with local.open(tasks, 2) as a_set, remote.open(tasks, 2) as b_set:
                for seed in (10, 11):  # two collections from one task set reuse its envs
                    a = a_set.collect(30, seed, params, g_local)
                    b = b_set.collect(30, seed, params, g_ray)
                    _same(a, b, exact)
            assert torch.equal(g_local.get_state(), g_ray.get_state())
        greedy = [c.open(tasks, 2).collect(30, 4, deterministic=True) for c in (local, remote)]
        _same(*greedy, exact=False)
        assert remote.failures == 0


def _meta_run(collector_factory, algo, iterations=2):
    family = make_family("nav2d", max_episode_steps=20)
    policy = _policy(family)
    cfg = MetaConfig(
        algo=algo, meta_batch_size=5, episodes_per_task=2, iterations=iterations, seed=7
    )
    trainer = MetaTrainer(policy, family, cfg, collector_factory(policy, family, cfg))
    rows = [trainer.step() for _ in range(iterations)]
    trainer.close()
    return rows, {k: v.detach().clone() for k, v in policy.named_parameters()}, trainer


def _close_rows(a, b):
    for ra, rb in zip(a, b):
        for f in dataclasses.fields(ra):
            x, y = getattr(ra, f.name), getattr(rb, f.name)
            if f.name in ("steps_per_second", "kl", "vectorized"):
                continue
            if isinstance(x, float):
                assert x == pytest.approx(y, rel=1e-9, abs=1e-9, nan_ok=True), f.name
            else:
                assert x == y, f.name


def test_maml_second_order_on_ray_trains_as_locally():
    """Exact MAML: trajectories on 2 workers, the meta-gradient on the learner."""
    local = _meta_run(lambda p, f, c: LocalCollector(p, f), "maml")
    remote = _meta_run(
        lambda p, f, c: RayCollector(p, f, RayConfig(num_workers=2), True, c), "maml"
    )
    _close_rows(local[0], remote[0])
    for k in local[1]:
        torch.testing.assert_close(local[1][k], remote[1][k], rtol=0, atol=1e-10)
    assert local[0][-1].global_step == remote[0][-1].global_step  # nothing counted twice


@pytest.mark.parametrize("algo", ["fomaml", "reptile"])
def test_first_order_adaptation_on_workers_gives_the_local_meta_gradient(algo):
    local = _meta_run(lambda p, f, c: LocalCollector(p, f), algo)
    remote = _meta_run(lambda p, f, c: RayCollector(p, f, RayConfig(num_workers=3), True, c), algo)
    assert remote[2].collector.adapts_on_workers
    _close_rows(local[0], remote[0])
    for k in local[1]:
        torch.testing.assert_close(local[1][k], remote[1][k], rtol=0, atol=1e-10)


def test_rl2_on_ray_trains_as_locally():
    family = make_family("bandit")
    out = []
    for make in (
        lambda p: LocalCollector(p, family),
        lambda p: RayCollector(p, family, RayConfig(num_workers=2)),
    ):
        policy = _policy(family, in_context=True)
        cfg = RL2Config(num_envs=6, num_minibatches=2, total_steps=6 * 100 * 2, seed=5)
        trainer = RL2Trainer(policy, family, cfg, make(policy))
        rows = [trainer.step().as_dict() for _ in range(2)]
        trainer.close()
        out.append((rows, [p.detach().clone() for p in policy.parameters()]))
    (rows_a, params_a), (rows_b, params_b) = out
    for ra, rb in zip(rows_a, rows_b):
        assert ra["global_step"] == rb["global_step"]
        for key in ra:
            if "per_second" not in key:
                assert ra[key] == pytest.approx(rb[key], rel=1e-9, abs=1e-9, nan_ok=True), key
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _kill_soon(collector: RayCollector, index: int, delay: float) -> threading.Timer:
    pid = collector.worker_pids()[index]
    timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def test_a_worker_killed_mid_collection_is_replaced_and_its_slice_recollected():
    family = SlowNav2D(max_episode_steps=50)
    policy, tasks = _policy(family), family.sample(4, split="train", seed=1)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    with LocalCollector(policy, family).open(tasks, 2) as s:
        expected = s.collect(100, 3, generator=gen_a)  # 100 steps x 4 envs x 4 ms: 1.6 s a slice
    with RayCollector(policy, family, RayConfig(num_workers=2)) as remote:
        old = remote.worker_pids()
        with remote.open(tasks, 2) as s:
            timer = _kill_soon(remote, 1, 0.5)
            got = s.collect(100, 3, generator=gen_b)
            timer.join()
            again = s.collect(100, 3, generator=torch.Generator().manual_seed(1))
        new = remote.worker_pids()
        assert remote.failures == 1
    assert new[0] == old[0] and new[1] != old[1]  # only the killed worker was replaced
    _same(expected, got, exact=False)  # the whole batch, each column exactly once
    assert got.B == 8 and torch.equal(gen_a.get_state(), gen_b.get_state())
    _same(expected, again, exact=False)  # the run goes on with the replacement


def test_a_slice_lost_more_often_than_allowed_fails_loudly():
    family = SlowNav2D(max_episode_steps=50)
    policy, tasks = _policy(family), family.sample(2, split="train", seed=1)
    with RayCollector(policy, family, RayConfig(num_workers=2, max_failures=0)) as remote:
        with remote.open(tasks, 2) as s:
            timer = _kill_soon(remote, 0, 0.3)
            with pytest.raises(WorkerLost, match="max_failures=0"):
                s.collect(100, 3, generator=torch.Generator().manual_seed(1))
            timer.join()
