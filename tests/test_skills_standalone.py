"""The import API stands alone: with gymnasium, metaworld, wandb and the training code made
unimportable, ``from skills import SkillLibrary`` still opens a library and acts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import ssm
from skills import Option, OptionRunner, SkillLibrary
from skills.extract import spec_for

REPO = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {"gymnasium", "gym", "metaworld", "wandb", "metarl", "mujoco", "yaml", "matplotlib"}
    BLOCKED |= {"einops"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    from skills import Option, OptionRunner, SkillLibrary

    lib = SkillLibrary.open(sys.argv[1])
    obs = np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
    skill = lib.get("walker")
    state, actions = None, []
    for o in obs:
        a, state = skill.act(o, state)
        actions.append(a.tolist())
    near = lib.nearest(np.array([1.0, 0.0]), k=1)[0][0]
    runner = OptionRunner([Option(skill, duration=2), Option(lib.get("other"), duration=1)])
    opts = [runner.act(o) for o in obs[:4]]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({
        "actions": actions, "near": near, "loaded": loaded,
        "options": [None if a is None else a.tolist() for a in opts],
    }))
    """
)


def test_import_api_needs_no_gymnasium_or_training_code(tmp_path):
    lib = SkillLibrary.create(tmp_path / "lib")
    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    pols = [
        ssm.SequencePolicy(
            obs_space, act_space, kind=k, d_model=8, n_layers=1, layer_kwargs={"d_state": 4}
        )
        for k in ("mamba", "s5")
    ]
    lib.add("walker", pols[0], spec_for(pols[0]), np.array([1.0, 0.1]))
    lib.add("other", pols[1], spec_for(pols[1]), np.array([0.0, 1.0]))
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    walker = lib.get("walker")
    want, state = [], None
    for o in obs:
        a, state = walker.act(o, state)
        want.append(a.tolist())
    runner = OptionRunner([Option(walker, duration=2), Option(lib.get("other"), duration=1)])
    want_opts = [runner.act(o) for o in obs[:4]]

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(lib.path), json.dumps(obs.tolist())],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []  # nothing blocked was even attempted successfully
    assert out["actions"] == want  # bit-identical to this process
    assert out["near"] == "walker"
    assert out["options"][:3] == [a.tolist() for a in want_opts[:3]]
    assert out["options"][3] is None and want_opts[3] is None
