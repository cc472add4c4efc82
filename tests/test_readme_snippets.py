"""The README's recipes run exactly as written (each ``<!-- snippet: name -->`` block)."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import ssm
from skills import SkillLibrary
from skills.extract import spec_for

README = Path(__file__).resolve().parent.parent / "README.md"


def snippets() -> dict[str, str]:
    text = README.read_text()
    found = re.findall(r"<!-- snippet: (\w+) -->\n```python\n(.*?)\n```", text, flags=re.S)
    return dict(found)


def test_the_readme_has_the_three_recipes():
    assert set(snippets()) == {"maml", "ewc", "skill"}


def test_maml_recipe_takes_a_meta_gradient_step():
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(snippets()["maml"], "README:maml", "exec"), namespace)
    policy, maml = namespace["policy"], namespace["maml"]
    # every actor parameter got a meta-gradient (the critic is not in the VPG/LVC outer loss)
    missing = [n for n, p in policy.named_parameters() if p.grad is None]
    assert missing and all(n.startswith("value.") for n in missing), missing
    assert namespace["query"].B == 8 and maml.inner_steps == 1


def test_ewc_recipe_anchors_task_a_and_pulls_back_on_task_b():
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(snippets()["ewc"], "README:ewc", "exec"), namespace)
    ewc, params = namespace["ewc"], namespace["params"]
    assert ewc.num_consolidations == 1
    assert float(ewc.penalty(params).detach()) > 0.0  # task B moved θ away from the anchor


def test_skill_recipe_acts_from_a_library(tmp_path, monkeypatch):
    library = SkillLibrary.create(tmp_path / "my_skills")
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    torch.manual_seed(0)
    policy = ssm.SequencePolicy(obs_space, act_space, kind="mamba", d_model=8, n_layers=1)
    library.add("walker", policy, spec_for(policy), np.array([1.0, 0.1]))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippets()["skill"], "README:skill", "exec"), namespace)
    assert namespace["name"] == "walker"
    assert namespace["action"].shape == (2,) and np.all(np.abs(namespace["action"]) <= 1)


@pytest.mark.parametrize("name", ["maml", "ewc", "skill"])
def test_recipes_stay_short(name):
    assert len(snippets()[name].splitlines()) <= 32
