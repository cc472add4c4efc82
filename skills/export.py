"""``metarl export-skills RUN_DIR [--library PATH]``: the policies of a run, as library skills.

    metarl export-skills runs/nav2d-1a2b3c4d                   into RUN_DIR/skills
    metarl export-skills runs/nav2d-1a2b3c4d --library shared/  into another library
    metarl export-skills RUN_DIR --prefix walker --overwrite   other names; replace same names

Which policies a run holds, by kind (``metarl.run_dir.RunDir.kind``):

- ``metarl train`` (PPO, RL², the MAML family): the policy of the latest checkpoint, one skill
  ``<prefix>/policy`` (for a meta-learner: the meta-learned initialisation);
- ``metarl sequence``: the continual learner's policy at the latest checkpoint, ``<prefix>/final``
  (a progressive network is refused: a library stores ``ssm.SequencePolicy`` skills);
- ``metarl population``: every network of the fittest PBT member (mean return over its recent
  iterations), ``<prefix>/agent<g>``; agents that read messages or choose options are skipped
  (their network alone is not the policy).

``<prefix>`` is the run directory's name unless ``--prefix`` is given.

Every skill's metadata says what to feed it and what it returns, so an agent outside this code
can use it: ``obs_layout`` lists the blocks the observation is made of, in order, e.g.::

    [{"name": "env", "size": 2},
     {"name": "task_onehot", "size": 3, "index_of": ["north_east", "south_west", "north_west"]}]

(a block with ``index_of`` is a one-hot: a 1 at the position of the name that applies), and
``action_space`` is the spec's action space (``ssm.spec`` JSON). ``in_context`` says whether the
policy also reads the previous action, reward and done (RL²; ``Skill.act`` feeds them). A
``metarl train`` observation is the environment's; a population agent's is its own observation
followed by a one-hot of its slot (when the run appends ids). A run may record its layout in
``RUN_DIR/observation_layout.json`` (that JSON list); the exporter reads it (checking that the
sizes add up to the policy's observation) and otherwise describes the observation as one block.

The embedding of an exported skill is derived from its name (sha256; the run has no task
parameters to embed), with the library's embedding size. Everything is read and checked before
anything is written; the skills are then added in one manifest write (all or none). An existing
skill name is refused unless ``--overwrite``. User errors print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarl.config import ConfigError
from metarl.run_dir import CheckpointError, RunDir, RunDirError
from ssm.spec import PolicySpec

from .errors import SkillLibraryError
from .library import MANIFEST, SkillLibrary, _check_name
from .network import build_network
from .storage import json_depth

__all__ = ["ExportedSkill", "export_skills", "main", "run_skills"]

EXIT_USER = 2
LAYOUT_FILE = "observation_layout.json"
"""where a run may record its observation layout (a JSON list of blocks)"""
DEFAULT_EMBEDDING_DIM = 8
"""the embedding size of a new library's exported skills"""


class ExportError(SkillLibraryError):
    """A run (or a library path) that cannot be exported as asked (one line)."""


@dataclass
class ExportedSkill:
    """One policy of a run, ready to add to a library."""

    name: str
    """the skill's name in the library"""
    spec: PolicySpec
    """the spec that rebuilds its network"""
    params: dict[str, Tensor]
    """its full parameters"""
    metadata: dict[str, Any] = field(default_factory=dict)
    """obs_layout, action_space, in_context, run, and the kind's own fields"""


# -- observation layouts ------------------------------------------------------------------------
def _obs_size(spec: PolicySpec) -> int:
    obs = spec.observation
    return obs["n"] if obs["type"] == "discrete" else int(np.prod(obs["shape"]))


def _env_block(spec: PolicySpec, name: str = "env") -> dict[str, Any]:
    obs = spec.observation
    if obs["type"] == "discrete":
        return {"name": name, "size": obs["n"], "index_of": list(range(obs["n"]))}
    block: dict[str, Any] = {"name": name, "size": int(np.prod(obs["shape"]))}
    if len(obs["shape"]) > 1 or obs.get("dtype", "float32") != "float32":
        block.update(shape=list(obs["shape"]), dtype=obs.get("dtype", "float32"))
    return block


def _check_layout(layout: Any, size: int, where: Path) -> list[dict[str, Any]]:
    """A layout read from a run directory (untrusted): a list of ``{name, size[, index_of]}``
    whose sizes add up to ``size``."""

    def bad(why: str) -> ExportError:
        return ExportError(f"{where}: {why}")

    if not isinstance(layout, list) or not layout or len(layout) > 64 or json_depth(layout) > 4:
        raise bad("must be a list of 1 to 64 blocks {name, size[, index_of]}")
    out = []
    for block in layout:
        if not isinstance(block, dict) or not {"name", "size"} <= set(block):
            raise bad(f"block {block!r} needs a name and a size")
        name, n = block["name"], block["size"]
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise bad(f"block name {name!r} must be a str of 1 to 64 characters")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise bad(f"block {name!r} has an invalid size {n!r}")
        index = block.get("index_of")
        if index is not None and (
            not isinstance(index, list)
            or len(index) != n
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in index)
        ):
            raise bad(f"block {name!r}: index_of must list {n} names")
        out.append({k: block[k] for k in ("name", "size", "index_of") if k in block})
    total = sum(b["size"] for b in out)
    if total != size:
        raise bad(f"the blocks' sizes add up to {total}, the policy reads {size} numbers")
    return out


def _recorded_layout(run: RunDir, spec: PolicySpec) -> list[dict[str, Any]] | None:
    path = run.path / LAYOUT_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes()[: 1 << 20].decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    return _check_layout(data, _obs_size(spec), path)


def _metadata(run: RunDir, spec: PolicySpec, layout: list[dict[str, Any]], **extra) -> dict:
    try:
        meta = run.meta
    except (OSError, ValueError):
        meta = {}
    return {
        "source": "export-skills",
        "obs_layout": layout,
        "action_space": spec.action,
        "in_context": spec.in_context,
        "provenance": {
            "run": str(run.path.resolve()),
            "run_kind": run.kind,
            "commit": meta.get("commit") if isinstance(meta, dict) else None,
        },
        **extra,
    }


# -- the policies of each kind of run -----------------------------------------------------------
def _policy_record(state: dict[str, Any], run: RunDir) -> tuple[PolicySpec, dict] | None:
    """The checkpoint's policy record (``{"kind", "spec", "state"}``), if it has one."""
    record = state.get("policy")
    if record is None:
        return None
    if not isinstance(record, dict) or not {"kind", "spec", "state"} <= set(record):
        raise ExportError(f"{run.path}: the checkpoint's policy record is malformed")
    if record["kind"] != "sequence":
        raise ExportError(
            f"{run.path}: the run's policy is a {record['kind']!r} network; a skill library "
            "stores ssm.SequencePolicy skills"
        )
    try:
        spec = PolicySpec.from_json(json.loads(record["spec"]))
    except (TypeError, ValueError) as e:
        raise ExportError(f"{run.path}: the checkpoint's policy spec is invalid: {e}") from None
    return spec, dict(record["state"])


def _train_skills(run: RunDir, state: dict[str, Any], prefix: str) -> list[ExportedSkill]:
    from metarl.train_config import TrainConfig, build_family, build_policy

    cfg = run.load_config(TrainConfig)
    found = _policy_record(state, run)
    if found is None:  # checkpoints written before policy records: rebuilt from the config
        policy = build_policy(cfg, build_family(cfg))
        spec, params = policy.spec, state["trainer"]["policy"]
    else:
        spec, params = found
    layout = _recorded_layout(run, spec) or [_env_block(spec)]
    algo = cfg.algo if cfg.algo != "maml" else f"maml/{cfg.meta.algo}"
    meta = _metadata(run, spec, layout, algo=algo, family=cfg.family)
    if cfg.algo == "maml":
        meta["role"] = "meta-learned initialisation (adapt it with a few gradient steps)"
    return [ExportedSkill(f"{prefix}/policy", spec, params, meta)]


def _sequence_skills(run: RunDir, state: dict[str, Any], prefix: str) -> list[ExportedSkill]:
    found = _policy_record(state, run)
    if found is None:
        raise ExportError(
            f"{run.path}'s checkpoint holds no policy record (written before this version); "
            "resume the run for one iteration to write one"
        )
    spec, params = found
    layout = _recorded_layout(run, spec)
    meta = _metadata(run, spec, layout or [_env_block(spec, "observation")])
    if layout is None:
        meta["obs_layout_note"] = (
            "the run recorded no observation layout: a curriculum's task one-hot, if it appends "
            "one, is the last numbers of this block"
        )
    return [ExportedSkill(f"{prefix}/final", spec, params, meta)]


def _population_skills(run: RunDir, state: dict[str, Any], prefix: str) -> list[ExportedSkill]:
    from metarl.population import MultiAgentLearner, PopulationConfig, build_env

    cfg = dataclasses.replace(run.load_config(PopulationConfig), backend="local")
    trainer = state.get("trainer", {})
    members, recent = trainer.get("members"), trainer.get("recent")
    if not isinstance(members, list) or not members or not isinstance(recent, list):
        raise ExportError(f"{run.path}: the checkpoint holds no population members")
    fitness = [float(np.nanmean(r)) if len(r) else math.nan for r in recent]
    best = int(np.nanargmax(fitness)) if any(math.isfinite(f) for f in fitness) else 0
    env = build_env(cfg.env)
    learner = MultiAgentLearner(cfg, env, seed=0)
    nets = members[best].get("nets") if isinstance(members[best], dict) else None
    if not isinstance(nets, list) or len(nets) != len(learner.nets):
        raise ExportError(f"{run.path}: member {best}'s networks do not match the run's config")
    ids = learner.id_dim > 0
    out = []
    for g, (net, sd) in enumerate(zip(learner.nets, nets)):
        if learner.option_groups[g] or net.d_msg > 0:
            continue  # its network alone is not the agent's policy
        net.load_state_dict(sd)
        spec = net.body.spec
        layout = [{"name": "env", "size": env.obs_dim}]
        if ids:
            names = list(getattr(env, "agent_names", range(env.n_agents)))
            layout.append({"name": "agent_onehot", "size": env.n_agents, "index_of": names})
        slots = learner.groups[g]
        meta = _metadata(
            run, spec, _check_layout(layout, _obs_size(spec), run.path / "config.yaml"),
            algo=cfg.algo, env=cfg.env.name, member=best, slots=slots,
        )  # fmt: skip
        params = {k: v.detach().clone() for k, v in net.body.state_dict().items()}
        out.append(ExportedSkill(f"{prefix}/agent{g}", spec, params, meta))
    if not out:
        raise ExportError(
            f"{run.path}: every agent of the population reads messages or chooses options; "
            "no network alone is a policy"
        )
    return out


def run_skills(run_dir: str | Path, prefix: str | None = None) -> list[ExportedSkill]:
    """The policies of the run at ``run_dir`` (see the module docstring), checked: each spec
    builds a network that loads its parameters strictly."""
    run = RunDir.open(run_dir)
    kind = run.kind
    builders = {"train": _train_skills, "sequence": _sequence_skills,
                "population": _population_skills}  # fmt: skip
    if kind not in builders:
        raise RunDirError(
            f"{run.path}: not a run of metarl train, sequence or population (its config.yaml "
            "has none of their keys)"
        )
    prefix = run.path.name if prefix is None else prefix
    state = run.load_checkpoint("latest")
    try:
        skills = builders[kind](run, state, prefix)
    except (SkillLibraryError, ConfigError):
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(
            f"{run.path}: cannot rebuild the {kind} run's policies: {type(e).__name__}: {first}"
        ) from None
    for s in skills:
        _check_name(s.name)
        try:
            build_network(s.spec).load_state_dict(s.params, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ExportError(
                f"{run.path}: {s.name}'s parameters do not fit its spec: {first}"
            ) from None
    return skills


# -- writing ------------------------------------------------------------------------------------
def _embedding(name: str, dim: int) -> np.ndarray:
    """A fixed unit vector from the name's sha256 (the run has no task parameters to embed)."""
    digest = b"".join(hashlib.sha256(f"{name}#{i}".encode()).digest() for i in range(dim // 8 + 1))
    v = np.frombuffer(digest, dtype=np.uint32)[:dim].astype(np.float64) / 2**32 - 0.5
    return (v / np.linalg.norm(v)).astype(np.float32)


def _check_library_path(path: Path) -> None:
    """A library path must be an existing library, an empty folder or a new path."""
    if path.exists() and not path.is_dir():
        raise ExportError(f"--library {path} is a file, not a skill library folder")
    if path.is_dir() and not (path / MANIFEST).exists() and any(path.iterdir()):
        raise ExportError(f"--library {path} is a folder that is neither a skill library nor empty")


def export_skills(
    run_dir: str | Path,
    library: str | Path | None = None,
    prefix: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Add the policies of ``run_dir`` to the skill library ``library`` (default:
    ``RUN_DIR/skills``, created if missing); returns the library's path and the skill names.
    Everything is checked before anything is written."""
    path = Path(run_dir) / "skills" if library is None else Path(library)
    _check_library_path(path)
    skills = run_skills(run_dir, prefix)
    existing = SkillLibrary.open(path) if (path / MANIFEST).exists() else None
    taken = [s.name for s in skills if existing is not None and s.name in existing]
    if taken and not overwrite:
        raise ExportError(
            f"{path} already has skill(s) {taken}; pass --overwrite to replace them, or "
            "--prefix for other names"
        )
    dim = (existing.embedding_dim if existing is not None else None) or DEFAULT_EMBEDDING_DIM
    lib = existing if existing is not None else SkillLibrary.open(path, create=True)
    items = [
        {
            "name": s.name,
            "params": s.params,
            "arch": s.spec,
            "embedding": _embedding(s.name, dim),
            "metadata": {**s.metadata, "embedding": "sha256 of the skill name"},
        }
        for s in skills
    ]
    lib.add_many(items, replace=overwrite)
    return path, [s.name for s in skills]


# -- the command --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="metarl export-skills",
        description="Add a run's policies (metarl train, sequence or population) to a skill "
        "library, each with its observation layout and action space.",
    )
    ap.add_argument("run_dir", help="the run directory")
    ap.add_argument(
        "--library", default=None, help="skill library folder (default: RUN_DIR/skills)"
    )
    ap.add_argument("--prefix", default=None, help="skill name prefix (default: the run's name)")
    ap.add_argument("--overwrite", action="store_true", help="replace skills of the same names")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``metarl export-skills``: 0 on success, 2 for a user error (one line on stderr)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    try:
        path, names = export_skills(args.run_dir, args.library, args.prefix, args.overwrite)
    except (ExportError, RunDirError, CheckpointError, SkillLibraryError, ConfigError) as e:
        line = " ".join(str(e).split())
        print(f"metarl export-skills: {line}", file=sys.stderr)
        return EXIT_USER
    for name in names:
        print(f"exported {name}")
    print(f"{len(names)} skill(s) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
