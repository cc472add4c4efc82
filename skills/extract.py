"""Turning trained policies into library skills (training side).

- :func:`skill_from_policy`: one ``ssm.SequencePolicy`` (or a parameter dict for it) -> one entry
  with the policy's own spec.
- :func:`extract_task_skills`: the per-task parameters of a meta-learning or continual run (policy
  params + task spec) -> one entry per task, stored as deltas on the shared initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from ssm.spec import PolicySpec

from .errors import SkillLibraryError
from .library import SkillLibrary
from .network import build_network
from .skill import SkillInfo


def _merged(policy: nn.Module, params: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    sd = {k: v.detach() for k, v in policy.state_dict().items()}
    if params is not None:
        unknown = sorted(set(params) - set(sd))
        if unknown:
            raise SkillLibraryError(f"params name tensors the policy lacks: {unknown[:5]}")
        sd.update({k: v.detach() for k, v in params.items()})
    return sd


def spec_for(policy: nn.Module, params: Mapping[str, Tensor] | None = None) -> PolicySpec:
    """``policy.spec``, checked: the network built from it must load the policy's parameters
    (with ``params`` overriding them) strictly."""
    spec = getattr(policy, "spec", None)
    if not isinstance(spec, PolicySpec):
        raise SkillLibraryError(
            f"a skill needs an ssm.SequencePolicy (which carries a PolicySpec), got "
            f"{type(policy).__name__}"
        )
    try:
        build_network(spec).load_state_dict(_merged(policy, params), strict=True)
    except RuntimeError as e:
        raise SkillLibraryError(f"the policy's parameters do not fit its spec: {e}") from None
    return spec


def task_embedding(task: Any) -> np.ndarray:
    """The numeric parameters of a task spec (a ``metarl`` ``Task`` or its ``to_dict()``),
    flattened in name order: e.g. nav2d's goal ``(x, y)``. Strings are skipped."""
    d = task.to_dict() if hasattr(task, "to_dict") else dict(task)
    values: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, (bool, int, float, np.integer, np.floating)):
            values.append(float(v))

    for key in sorted(d.get("params", {})):
        walk(d["params"][key])
    if not values or not any(values):
        raise SkillLibraryError(
            f"task {d} has no non-zero numeric parameters to embed; pass embeddings"
        )
    return np.asarray(values, dtype=np.float32)


def _task_dict(task: Any) -> dict[str, Any]:
    return task.to_dict() if hasattr(task, "to_dict") else dict(task)


def skill_from_policy(
    library: SkillLibrary,
    name: str,
    policy: nn.Module,
    embedding: Any,
    *,
    params: Mapping[str, Tensor] | None = None,
    base: str | None = None,
    task: Any = None,
    source: str = "policy",
    returns: float | None = None,
    success: float | None = None,
    budget: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> SkillInfo:
    """Add ``policy`` (with ``params`` overriding its own, e.g. task-adapted ones) as skill
    ``name``. ``task`` (a task spec) is recorded in the provenance."""
    spec = spec_for(policy, params)
    prov = dict(provenance or {})
    if task is not None:
        prov["task"] = _task_dict(task)
    return library.add(
        name,
        _merged(policy, params),
        spec,
        embedding,
        base=base,
        source=source,
        returns=returns,
        success=success,
        budget=budget,
        provenance=prov,
        metadata=metadata,
        replace=replace,
    )


def extract_task_skills(
    library: SkillLibrary,
    policy: nn.Module,
    tasks: Sequence[Any],
    params_per_task: Sequence[Mapping[str, Tensor]],
    *,
    base_name: str | None = None,
    base_params: Mapping[str, Tensor] | None = None,
    embeddings: np.ndarray | None = None,
    returns: Sequence[float] | None = None,
    successes: Sequence[float] | None = None,
    prefix: str = "task",
    source: str = "meta-learning",
    budget: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> list[SkillInfo]:
    """One skill per task from a meta-learning or continual run.

    ``params_per_task[i]`` are the parameters for ``tasks[i]`` (a full or partial parameter dict
    of ``policy``, e.g. after the inner-loop adaptation). With ``base_name``, ``base_params``
    (default: the policy's own, i.e. the meta-learned initialisation) are stored once as that
    base and each task stores only the tensors its adaptation changed. Embeddings default to
    :func:`task_embedding`; names are ``<prefix>/<family>/<split>#<index>``.
    """
    if len(tasks) != len(params_per_task):
        raise ValueError(f"{len(tasks)} tasks but {len(params_per_task)} parameter sets")
    spec = spec_for(policy)
    if base_name is not None:
        library.add_base(base_name, _merged(policy, base_params), spec)
    items = []
    for i, (task, params) in enumerate(zip(tasks, params_per_task)):
        td = _task_dict(task)
        name = f"{prefix}/{td.get('family', 'task')}/{td.get('split', '')}#{td.get('index', i)}"
        items.append(
            {
                "name": name,
                "params": _merged(policy, params),
                "arch": spec,
                "embedding": embeddings[i] if embeddings is not None else task_embedding(task),
                "base": base_name,
                "source": source,
                "returns": None if returns is None else float(returns[i]),
                "success": None if successes is None else float(successes[i]),
                "budget": budget,
                "provenance": {**(provenance or {}), "task": td},
            }
        )
    return library.add_many(items)
