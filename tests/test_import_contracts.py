"""The import contracts (``.ci/import_contracts.py``): the repository keeps them, and an upward,
sibling or cyclic import, at module level or inside a function, breaks them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "import_contracts.py"


def _checker():
    spec = importlib.util.spec_from_file_location("import_contracts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60
    )


def test_the_repository_keeps_its_import_contracts():
    out = _run(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == ""


FAKE = {
    "ssm/__init__.py": "",
    "ssm/core.py": "import torch\n",
    "ssm/dynamic.py": (
        "import importlib\n\ndef load():\n    return importlib.import_module('metarl.rollout')\n"
    ),
    "metarl/__init__.py": "from .rollout import Rollout\n",
    "metarl/rollout.py": "from ssm import core\n\nRollout = object\n",
    # upward, at module level and lazily
    "metarl/population/__init__.py": "",
    "metarl/population/bridge.py": "import skills.library\n",
    "metarl/population/lazy.py": "def open_library():\n    from skills import library\n",
    # a cycle between two sub-units, one side hidden in a function, one side relative
    "metarl/meta/__init__.py": "",
    "metarl/meta/train.py": "def make():\n    from metarl.backends import collector\n",
    "metarl/backends/__init__.py": "",
    "metarl/backends/collector.py": "from ..meta import train\n",
    # a cycle only through TYPE_CHECKING never runs: harmless
    "metarl/a.py": (
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from metarl import b\n"
    ),
    "metarl/b.py": "from metarl import a\n",
    # ...but a type-only upward import still points up
    "metarl/typed.py": (
        "import typing\n\nif typing.TYPE_CHECKING:\n    from continual.learner import Learner\n"
    ),
    "curricula/__init__.py": "",
    "curricula/stages.py": "from metarl import rollout\n",
    "continual/__init__.py": "",
    "continual/learner.py": "from curricula.stages import STAGES\n",  # the allowed sibling
    "skills/__init__.py": "",
    "skills/library.py": "from curricula import stages\n",  # a forbidden sibling
    "experiments/run.py": "import continual, skills, curricula\n",  # scripts are not checked
}

EXPECTED = [
    "metarl/backends/collector.py:1: 'metarl.backends.collector' imports 'metarl.meta.train' "
    "(cycle in metarl: metarl.backends <-> metarl.meta)",
    "metarl/meta/train.py:2: 'metarl.meta.train' imports 'metarl.backends.collector' "
    "(cycle in metarl: metarl.backends <-> metarl.meta)",
    "metarl/population/bridge.py:1: 'metarl.population.bridge' imports 'skills.library' "
    "(upward: metarl -> skills)",
    "metarl/population/lazy.py:2: 'metarl.population.lazy' imports 'skills.library' "
    "(upward: metarl -> skills)",
    "metarl/typed.py:4: 'metarl.typed' imports 'continual.learner' [TYPE_CHECKING] "
    "(upward: metarl -> continual)",
    "skills/library.py:1: 'skills.library' imports 'curricula.stages' "
    "(sibling: skills -> curricula; allowed between siblings: continual -> curricula)",
    "ssm/dynamic.py:4: 'ssm.dynamic' imports 'metarl.rollout' (upward: ssm -> metarl)",
]


def test_upward_sibling_and_cyclic_imports_break_the_contracts(tmp_path):
    root = _tree(tmp_path, FAKE)
    assert _checker().violations(root) == EXPECTED
    out = _run(root)
    assert out.returncode == 1
    assert out.stdout.splitlines() == EXPECTED


def test_a_tree_without_violations_passes(tmp_path):
    clean = {k: v for k, v in FAKE.items() if k.startswith(("ssm/__init__", "ssm/core"))}
    clean |= {k: FAKE[k] for k in ("metarl/__init__.py", "metarl/rollout.py", "metarl/a.py")}
    clean |= {k: FAKE[k] for k in ("metarl/b.py", "continual/learner.py", "curricula/stages.py")}
    root = _tree(tmp_path, clean)
    assert _checker().violations(root) == []
    assert _run(root).returncode == 0


def test_relative_imports_resolve_against_the_importing_module(tmp_path):
    root = _tree(
        tmp_path,
        {
            "metarl/__init__.py": "",
            "metarl/meta/__init__.py": "from . import train\n",
            "metarl/meta/train.py": "from ..rollout import Rollout\nfrom .base import x\n",
            "metarl/meta/base.py": "",
            "metarl/rollout.py": "",
        },
    )
    found = {(i.importer, i.imported) for i in _checker().find_imports(root)}
    assert found == {
        ("metarl.meta", "metarl.meta.train"),
        ("metarl.meta.train", "metarl.rollout"),
        ("metarl.meta.train", "metarl.meta.base"),
    }


def test_import_continual_stays_light_and_metarl_exports_the_learners():
    """EWC or replay in your own loop must not pull in the run machinery."""
    code = (
        "import sys, continual\n"
        "heavy = ['metarl.runner', 'metarl.harness', 'metarl.meta', 'metarl.backends',\n"
        "         'continual.sequence', 'continual.learner']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "from metarl import MAML, IMAML, Reptile, MetaTrainer, PPOTrainer, RL2Trainer, run_loop\n"
        "from continual import EWC, ContinualLearner, run_sequence\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
