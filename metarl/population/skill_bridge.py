"""Library skills for the population: as initialisations and as options.

``metarl`` sits below ``skills`` in the architecture, so this module never imports it: it works
on any :class:`~metarl.population.skill_source.SkillSource` (:class:`skills.SkillLibrary` is one),
opened with :func:`~metarl.population.skill_source.open_skill_source`.

- :func:`init_agent_from_skill`: copy a skill's parameters into an :class:`AgentNet` body. A
  parameter of the same shape is copied; a first encoder layer that is wider only because the
  agent's observation has a one-hot id appended gets the skill's columns and zeros for the id
  columns, so the agent acts exactly like the skill from the start.
- :class:`SkillBank`: frozen skills acting for the slots of option agents. An option agent's
  policy picks a skill index every ``k`` steps (the semi-MDP of options, Sutton, Precup & Singh
  1999); the chosen skill starts from a fresh state and produces the primitive actions until the
  next choice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .networks import AgentNet
from .skill_source import SkillLike, SkillSource

__all__ = ["SkillBank", "init_agent_from_skill", "load_skills", "skill_arch"]


def load_skills(library: SkillSource, names: list[str]) -> list[SkillLike]:
    """The named skills (all of the library's, in name order, when ``names`` is empty)."""
    names = list(names) or sorted(library.list())
    if not names:
        raise ValueError(f"the skill source {library!r} holds no skills")
    return [library.get(n) for n in names]


def skill_arch(skill: SkillLike) -> dict[str, Any]:
    """The :class:`AgentNet` body arguments of a skill's architecture."""
    spec = skill.spec
    return {
        "kind": spec.kind,
        "d_model": spec.d_model,
        "n_layers": spec.n_layers,
        "encoder_hidden": spec.encoder_hidden,
        "layer_kwargs": dict(spec.layer_kwargs),
    }


def _check_compatible(skill: SkillLike, obs_dim: int, n_actions: int) -> None:
    spec = skill.spec
    if spec.in_context:
        raise ValueError(f"skill {skill.name!r} is in-context (RL²); the population cannot feed it")
    if tuple(spec.obs_shape) != (obs_dim,):
        raise ValueError(
            f"skill {skill.name!r} observes shape {tuple(spec.obs_shape)}, the game ({obs_dim},)"
        )
    if spec.action.get("type") != "discrete" or int(spec.action["n"]) != n_actions:
        raise ValueError(
            f"skill {skill.name!r} acts in {spec.action}; the game has Discrete({n_actions})"
        )


@torch.no_grad()
def init_agent_from_skill(net: AgentNet, skill: SkillLike) -> dict[str, int]:
    """Load ``skill``'s parameters into ``net.body``; returns ``{"copied", "widened", "kept"}``
    parameter counts. The action head is copied only when its size matches (an option agent's
    head chooses among skills, so it keeps its own)."""
    source = skill.network.unconditioned_state_dict()
    copied = widened = kept = 0
    for name, p in net.body.named_parameters():
        w = source.get(name)
        if w is not None and w.shape == p.shape:
            p.copy_(w.to(p.dtype))
            copied += 1
        elif (
            w is not None
            and name == "encoder.net.0.weight"
            and w.shape[0] == p.shape[0]
            and w.shape[1] < p.shape[1]
        ):
            p[:, : w.shape[1]] = w.to(p.dtype)
            p[:, w.shape[1] :] = 0.0  # the appended id starts without effect
            widened += 1
        else:
            kept += 1
    return {"copied": copied, "widened": widened, "kept": kept}


class SkillBank:
    """Frozen library skills acting for ``R`` rows at once.

    Every step all skills advance on all rows (they are tiny), each from a state that restarts
    where ``reset`` marks a new choice; a row's action is the one of the skill it has chosen. So a
    chosen skill always starts fresh and sees the observations since its choice.
    """

    def __init__(self, skills: list[SkillLike], obs_dim: int, n_actions: int):
        for s in skills:
            _check_compatible(s, obs_dim, n_actions)
        self.skills = list(skills)
        self.names = [s.name for s in skills]

    def __len__(self) -> int:
        return len(self.skills)

    def initial_state(self, rows: int) -> list:
        return [s.initial_state(rows).layers for s in self.skills]

    @torch.no_grad()
    def act(self, obs: Tensor, states: list, reset: Tensor, choice: Tensor) -> tuple[Tensor, list]:
        """``obs (R, D)``, ``reset (R,)`` bool, ``choice (R,)`` skill index -> ``(actions (R,),
        states)``; skills act greedily (their distribution's mode)."""
        actions = torch.zeros(obs.shape[0], dtype=torch.int64)
        new_states = []
        for j, (skill, state) in enumerate(zip(self.skills, states)):
            net = skill.network
            x = obs.to(next(net.parameters()).dtype)
            out, state = net.step(x, state, reset=reset)
            actions = torch.where(choice == j, net.mode(out).long(), actions)
            new_states.append(state)
        return actions, new_states
