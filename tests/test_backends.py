"""The rollout interface without Ray: task slices, slice-exact collection, the missing-Ray error."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from metarl.backends import INSTALL_HINT, LocalCollector, RayConfig, require_ray, task_slices
from metarl.config import ConfigError
from metarl.runner import PolicyConfig, TrainConfig, train
from metarl.task_rollout import collect_tasks
from metarl.tasks import make_family
from metarl.trajectory import Trajectory, concat_batch


def _policy(family, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = PolicyConfig(kind="gru", d_model=16, n_layers=1, encoder_hidden=16)
    return cfg.build(family.observation_space, family.action_space, False).to(dtype)


def _assert_same(a: Trajectory, b: Trajectory, exact: bool = True) -> None:
    for name, x in a.as_dict().items():
        if not isinstance(x, torch.Tensor):
            continue
        y = getattr(b, name)
        if exact or not x.is_floating_point():
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12, msg=name)


def _sliced(policy, family, tasks, bounds, steps, seed, gen_seed, params=None):
    parts, states = [], []
    for a, b in bounds:
        gen = torch.Generator().manual_seed(gen_seed)
        p = None if params is None else {k: v[a:b] for k, v in params.items()}
        parts.append(
            collect_tasks(
                policy,
                family,
                tasks[a:b],
                3,
                steps,
                seed,
                params=p,
                generator=gen,
                task_offset=a,
                total_tasks=len(tasks),
            )
        )
        states.append(gen.get_state())
    return concat_batch(parts), states


def test_task_slices_cover_the_batch_contiguously_and_evenly():
    for n in range(1, 30):
        for w in range(1, 9):
            s = task_slices(n, w)
            assert len(s) == min(n, w) and s[0][0] == 0 and s[-1][1] == n
            assert all(a1 == b0 for (_, a1), (b0, _) in zip(s, s[1:]))
            sizes = [b - a for a, b in s]
            assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes
    with pytest.raises(ValueError, match="need >= 1"):
        task_slices(0, 2)


@pytest.mark.parametrize("family_name", ["nav2d", "cartpole"])
def test_slices_collected_apart_join_into_the_whole_batch(family_name):
    """Per-task parameters (the adapted policies): bit for bit, and the generator ends where the
    whole batch leaves it. Shared parameters in float64: to rounding (a matrix product over fewer
    rows may round differently), and the same discrete actions."""
    family = make_family(family_name, max_episode_steps=30)
    tasks = family.sample(5, split="train", seed=4)
    bounds = [(0, 2), (2, 4), (4, 5)]
    policy = _policy(family, torch.float64)
    stacked = {
        k: torch.stack([v.detach() + 0.05 * i for i in range(5)])
        for k, v in policy.named_parameters()
    }
    for params, exact in ((stacked, True), (None, False)):
        gen = torch.Generator().manual_seed(9)
        whole = collect_tasks(policy, family, tasks, 3, 40, 17, params=params, generator=gen)
        joined, states = _sliced(policy, family, tasks, bounds, 40, 17, 9, params)
        _assert_same(whole, joined, exact)
        if family_name == "cartpole":
            assert torch.equal(whole.actions, joined.actions)
        assert all(torch.equal(s, gen.get_state()) for s in states)
        assert joined.task_ids.tolist() == [i for i in range(5) for _ in range(3)]


def test_a_slice_that_is_not_part_of_the_batch_is_refused():
    family = make_family("nav2d")
    policy = _policy(family)
    with pytest.raises(ValueError, match="not a slice of 3 tasks"):
        collect_tasks(policy, family, family.sample(2), 1, 5, 0, task_offset=2, total_tasks=3)


def test_local_collector_reuses_its_envs_and_reproduces_collect_tasks():
    family = make_family("nav2d", max_episode_steps=20)
    policy, tasks = _policy(family), family.sample(3, seed=1)
    with LocalCollector(policy, family).open(tasks, 2) as task_set:
        a = task_set.collect(25, 5, generator=torch.Generator().manual_seed(2))
        b = task_set.collect(25, 5, generator=torch.Generator().manual_seed(2))
    ref = collect_tasks(policy, family, tasks, 2, 25, 5, generator=torch.Generator().manual_seed(2))
    _assert_same(a, b)
    _assert_same(a, ref)


@pytest.fixture
def no_ray(monkeypatch):
    """Make ``import ray`` fail as on a machine without the extra."""
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_without_ray_the_error_names_the_install_command(no_ray, tmp_path):
    with pytest.raises(ImportError) as e:
        require_ray()
    assert INSTALL_HINT in str(e.value) and "backend: local" in str(e.value)
    cfg = TrainConfig(algo="rl2", family="bandit", backend="ray")
    cfg.run.root = str(tmp_path)
    with pytest.raises(ConfigError, match="pip install"):
        train(cfg)
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


def test_bad_backend_settings_are_config_errors(tmp_path):
    cfg = TrainConfig(algo="ppo", family="cartpole", backend="ray")
    cfg.run.root = str(tmp_path)
    with pytest.raises(ConfigError, match="algo ppo"):
        train(cfg)
    cfg = TrainConfig(algo="rl2", backend="ray", ray=RayConfig(num_workers=0))
    cfg.run.root = str(tmp_path)
    with pytest.raises(ConfigError, match="num_workers"):
        train(cfg)
    assert not any(tmp_path.iterdir())


def test_a_ray_population_without_ray_is_refused_before_anything_is_written(no_ray, tmp_path):
    from metarl.population import train_population
    from metarl.population.cli import main as population_main
    from metarl.population.config import PopulationConfig

    cfg = PopulationConfig(backend="ray", iterations=1)
    cfg.run.root = str(tmp_path)
    with pytest.raises(ConfigError, match="pip install"):
        train_population(cfg)
    code = population_main(["backend=ray", f"run.root={tmp_path}", "iterations=1"])
    assert code == 2
    assert not any(tmp_path.iterdir())


def test_a_ray_population_with_bad_ray_settings_is_a_config_error():
    from metarl.population.config import PopulationConfig

    with pytest.raises(ValueError, match="cpus_per_worker"):
        PopulationConfig(backend="ray", ray=RayConfig(cpus_per_worker=-1))
