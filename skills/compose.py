"""Composing skills: options run in sequence, a hierarchical selector, skills as initialisations.

- :class:`Option` / :class:`OptionRunner`: a skill with a termination condition (a fixed duration
  and/or a predicate on the observation), run one after another (Sutton, Precup & Singh, 1999).
- :class:`SkillSelector`: every ``k`` steps a controller with a categorical head over the skills
  chooses one, which then acts. The controller is an ordinary sequence policy over
  ``Discrete(len(skills))``, so PPO trains it on the semi-MDP that
  :class:`skills.hierarchy.SkillSelectionEnv` exposes.
- :func:`init_params_from_skill`: a skill's parameters as a parameter dict for a policy, e.g.
  the initialisation of a meta-learner.

Torch and numpy only, like the rest of the import API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from .errors import SkillLibraryError
from .skill import Skill, SkillState


# -- options ------------------------------------------------------------------------------------
@dataclass
class Option:
    """``skill`` acts until ``duration`` steps have passed or ``until(obs)`` holds (whichever
    comes first; at least one must be given). ``until`` is checked on every observation the option
    would act on, the first one included."""

    skill: Skill
    duration: int | None = None
    until: Callable[[np.ndarray], bool] | None = None

    def __post_init__(self) -> None:
        if self.duration is None and self.until is None:
            raise ValueError("an Option needs a duration, an until predicate, or both")
        if self.duration is not None and (
            isinstance(self.duration, bool)
            or not isinstance(self.duration, int)
            or self.duration < 1
        ):
            raise ValueError(f"duration must be a positive int, got {self.duration!r}")

    def terminated(self, obs: np.ndarray, steps: int) -> bool:
        if self.duration is not None and steps >= self.duration:
            return True
        return self.until is not None and bool(self.until(obs))


class OptionRunner:
    """Runs ``options`` one after another from a plain env loop::

        runner = OptionRunner([Option(reach, until=near_door), Option(push, duration=50)])
        obs, _ = env.reset()
        while (action := runner.act(obs)) is not None:
            obs, reward, terminated, truncated, _ = env.step(action)

    ``act`` returns None once the last option has terminated. Each option starts its skill from a
    fresh state. ``trace`` records ``(option index, steps it ran)`` for each finished option.
    """

    def __init__(self, options: Sequence[Option], deterministic: bool = True):
        if not options:
            raise ValueError("OptionRunner needs at least one option")
        self.options, self.deterministic = list(options), deterministic
        self.reset()

    def reset(self) -> None:
        self.index, self.steps = 0, 0
        self.state: SkillState | None = None
        self.trace: list[tuple[int, int]] = []

    @property
    def done(self) -> bool:
        return self.index >= len(self.options)

    @property
    def current(self) -> Option | None:
        return None if self.done else self.options[self.index]

    def act(self, obs: np.ndarray) -> np.ndarray | None:
        while not self.done and self.options[self.index].terminated(obs, self.steps):
            self.trace.append((self.index, self.steps))
            self.index, self.steps, self.state = self.index + 1, 0, None
        if self.done:
            return None
        option = self.options[self.index]
        action, self.state = option.skill.act(obs, self.state, deterministic=self.deterministic)
        self.steps += 1
        return action


# -- the hierarchical selector ------------------------------------------------------------------
class SelectorState(NamedTuple):
    controller: Any
    """the controller's recurrent state (it steps only at decision points)"""
    choice: Tensor
    """(B,) int64: the skill each row is running"""
    steps_left: Tensor
    """(B,) int64: low-level steps before the next decision (0: decide now)"""
    skills: tuple
    """per skill, its state for the whole batch (only the rows running it advance)"""


class SkillSelector(nn.Module):
    """A two-level policy: every ``k`` steps ``controller`` picks one of ``skills``.

    ``controller`` has the ``SequencePolicy`` API (``initial_state``, ``step``, ``sample``,
    ``mode``, ``log_prob``) over ``Discrete(len(skills))`` actions and the environment's
    observations. The skills are frozen and are not submodules, so ``selector.parameters()`` are
    the controller's alone, and an optimiser over them trains only the choice.
    """

    def __init__(
        self,
        controller: nn.Module,
        skills: Sequence[Skill],
        k: int,
        skills_deterministic: bool = True,
    ):
        super().__init__()
        if not skills:
            raise ValueError("SkillSelector needs at least one skill")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.controller, self.k = controller, k
        self.skills_deterministic = skills_deterministic
        self.skills = list(skills)  # a plain list: not registered, never trained here
        shapes = {s.spec.obs_shape for s in self.skills}
        if len(shapes) != 1:
            raise ValueError(f"the skills must share one observation shape, got {shapes}")
        actions = {str(s.spec.action) for s in self.skills}
        if len(actions) != 1:
            raise ValueError(f"the skills must share one action space, got {sorted(actions)}")
        n = getattr(getattr(controller, "head", None), "n", None)
        if n is not None and n != len(self.skills):
            raise ValueError(
                f"the controller chooses among {n} actions but there are {len(skills)} skills"
            )

    def initial_state(self, batch_size: int) -> SelectorState:
        p = next(self.controller.parameters())
        return SelectorState(
            controller=self.controller.initial_state(batch_size, p.device, p.dtype),
            choice=torch.zeros(batch_size, dtype=torch.int64, device=p.device),
            steps_left=torch.zeros(batch_size, dtype=torch.int64, device=p.device),
            skills=tuple(s.initial_state(batch_size).layers for s in self.skills),
        )

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        state: SelectorState | None,
        reset: Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, SelectorState, dict[str, Tensor]]:
        """One low-level step for a batch: ``obs (B, *obs_shape)`` -> ``(actions, state, info)``.

        ``state=None`` starts every row afresh; ``reset (B,)`` bool starts the marked rows
        afresh (a new episode: the controller's state is zeroed and it chooses again).
        ``info["decided"]`` marks the rows where the controller chose at this step and
        ``info["choice"]`` is each row's skill.
        """
        batch = obs.shape[0]
        state = self.initial_state(batch) if state is None else state
        decide = state.steps_left <= 0
        if reset is not None:
            decide = decide | reset
        choice, ctrl_state = state.choice, state.controller
        if decide.any():
            out, new_ctrl = self.controller.step(obs, ctrl_state, reset=reset)
            if deterministic:
                picked = self.controller.mode(out)
            else:
                picked = self.controller.sample(out, generator)
            choice = torch.where(decide, picked, choice)
            ctrl_state = pytree.tree_map(
                lambda new, old: torch.where(decide.view(-1, *[1] * (new.dim() - 1)), new, old),
                new_ctrl,
                ctrl_state,
            )
        steps_left = torch.where(decide, self.k, state.steps_left) - 1
        actions: Tensor | None = None
        skill_states = list(state.skills)
        for j, skill in enumerate(self.skills):
            rows = torch.nonzero(choice == j).flatten()
            if rows.numel() == 0:
                continue
            sub_state = pytree.tree_map(lambda s, rows=rows: s[rows], skill_states[j])
            net = skill.network
            x = obs[rows]
            if x.is_floating_point():
                x = x.to(next(net.parameters()).dtype)
            out, new_sub = net.step(x, sub_state, reset=decide[rows])
            if self.skills_deterministic:
                a = skill.bound(net.mode(out))
            else:
                a = skill.bound(net.sample(out, generator))
            if actions is None:
                actions = torch.zeros((batch, *a.shape[1:]), dtype=a.dtype, device=a.device)
            actions = actions.index_put((rows,), a)
            skill_states[j] = pytree.tree_map(
                lambda full, new, rows=rows: full.index_put((rows,), new), skill_states[j], new_sub
            )
        if actions is None or bool(((choice < 0) | (choice >= len(self.skills))).any()):
            raise ValueError(
                f"the controller chose skills {choice.tolist()}, not all in [0, {len(self.skills)})"
            )
        info = {"decided": decide, "choice": choice}
        return actions, SelectorState(ctrl_state, choice, steps_left, tuple(skill_states)), info


# -- skills as initialisations ------------------------------------------------------------------
def init_params_from_skill(
    skill: Skill, policy: nn.Module, strict: bool = True
) -> dict[str, Tensor]:
    """A parameter dict for ``policy`` (names of ``policy.named_parameters()``) taken from
    ``skill``: the initialisation for a meta-learner's ``functional_call``/``grad``, or for
    ``policy.load_state_dict(..., strict=False)``.

    A conditioned skill (DIAYN's ``π(a | s, z)`` with ``z`` fixed) fits a policy that never sees
    ``z``: its code is folded into the first encoder bias, exactly. With ``strict=False``,
    parameters the skill lacks (or has in another shape) keep the policy's current values.
    """
    targets = dict(policy.named_parameters())
    candidates = [skill.network.unconditioned_state_dict(), skill.params()]

    def fits(sd: dict[str, Tensor]) -> list[str]:
        return [n for n, p in targets.items() if n not in sd or sd[n].shape != p.shape]

    misfits = [fits(sd) for sd in candidates]
    best = min(range(len(candidates)), key=lambda i: len(misfits[i]))
    source, missing = candidates[best], misfits[best]
    if missing and strict:
        raise SkillLibraryError(
            f"skill {skill.name!r} does not fit the policy: {len(missing)} parameter(s) missing or "
            f"of another shape, e.g. {missing[:5]} (pass strict=False to keep the policy's own)"
        )
    out = {}
    for name, p in targets.items():
        if name in missing:
            out[name] = p.detach().clone()
        else:
            out[name] = source[name].to(dtype=p.dtype, device=p.device).clone()
    return out
