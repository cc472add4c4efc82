"""The whole declared stack is installed by `make setup` (the CI's clean checkout runs it), so no
family's tests are skipped for a missing package without anyone noticing."""

from __future__ import annotations

import importlib
import os

import pytest

DECLARED = [
    "procgen",  # installed without its numpy<2 pin (Makefile)
    "gym3",
    "metaworld",
    "mujoco",
    "wandb",
    "ray",
    "pettingzoo",
    "tensorboard",
    "mkdocs",
    "mkdocstrings",
    "higher",
]


@pytest.mark.skipif(
    os.environ.get("SSM_METARL_PARTIAL_STACK") == "1",
    reason="SSM_METARL_PARTIAL_STACK=1: a deliberately partial install",
)
@pytest.mark.parametrize("module", DECLARED)
def test_declared_package_is_installed(module):
    importlib.import_module(module)


def test_procgen_steps_under_numpy_2():
    np = pytest.importorskip("numpy")
    procgen = pytest.importorskip("procgen")
    env = procgen.ProcgenGym3Env(num=2, env_name="coinrun", num_levels=1, start_level=0)
    env.act(np.zeros(2, dtype=np.int32))
    reward, obs, first = env.observe()
    assert obs["rgb"].shape == (2, 64, 64, 3) and reward.shape == (2,)
