"""``Skill``: a loaded library entry that acts from numpy observations, and ``SkillInfo``, the
entry's description (no tensors loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ssm.policy import PolicyState, SequencePolicy
from ssm.spec import PolicySpec, is_image


@dataclass(frozen=True)
class SkillInfo:
    """What the manifest says about a skill: enough to query it without loading tensors."""

    name: str
    id: str
    arch: PolicySpec
    embedding: np.ndarray
    """(d,) float32, read-only"""
    metadata: dict[str, Any] = field(default_factory=dict)
    """source, returns, success, budget, provenance, created, and anything the adder gave"""
    base: str | None = None
    """the shared base whose parameters this skill overrides, or None for a full parameter set"""
    file: str | None = None
    """the tensor file (relative to the library), None for a skill that is its base plus a
    condition"""
    sha256: str | None = None

    @property
    def source(self) -> Any:
        return self.metadata.get("source")

    @property
    def created(self) -> Any:
        return self.metadata.get("created")


class SkillState(NamedTuple):
    """The recurrent state ``Skill.act`` carries between calls (opaque to the caller)."""

    layers: PolicyState
    prev_action: Tensor | None
    """the last action, for in-context (RL²) skills"""


class Skill:
    """A library skill, ready to act. Get one with ``SkillLibrary.get(name)``.

    ``act`` works from a plain gymnasium loop::

        state = None                        # None starts a new episode
        obs, _ = env.reset()
        while not done:
            action, state = skill.act(obs, state)
            obs, reward, terminated, truncated, _ = env.step(action)

    ``network`` is the :class:`ssm.SequencePolicy` built from the skill's spec, in eval mode
    with gradients off.
    """

    def __init__(self, info: SkillInfo, network: SequencePolicy):
        self.info, self.network = info, network
        self.name, self.spec = info.name, info.arch
        action = info.arch.action
        self._discrete_obs = info.arch.observation["type"] == "discrete"
        self._image_obs = is_image(info.arch.observation)
        self._discrete_action = action["type"] != "box"
        if not self._discrete_action:
            shape = tuple(action["shape"])
            self._low = np.asarray(action["low"], dtype=np.float64).reshape(shape)
            self._high = np.asarray(action["high"], dtype=np.float64).reshape(shape)
            self._action_dtype = np.dtype(action.get("dtype", "float32"))

    def __repr__(self) -> str:
        return f"Skill({self.name!r}, kind={self.spec.kind!r}, base={self.info.base!r})"

    @property
    def metadata(self) -> dict[str, Any]:
        return self.info.metadata

    @property
    def embedding(self) -> np.ndarray:
        return self.info.embedding

    def params(self) -> dict[str, Tensor]:
        """A copy of the skill's parameters (its network's state dict)."""
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def initial_state(self, batch_size: int = 1) -> SkillState:
        p = next(self.network.parameters())
        layers = self.network.initial_state(batch_size, p.device, p.dtype)
        prev = None
        if self.spec.in_context:
            shape = (batch_size, *self.spec.action_shape)
            dtype = p.dtype if not self._discrete_action else torch.int64
            prev = torch.zeros(shape, dtype=dtype, device=p.device)
        return SkillState(layers, prev)

    # -- acting ---------------------------------------------------------------------------------
    def _obs_tensor(self, obs: Any) -> tuple[Tensor, bool]:
        arr = np.asarray(obs)
        want = self.spec.obs_shape
        if arr.shape == want:
            arr, batched = arr[None], False
        elif arr.ndim == len(want) + 1 and arr.shape[1:] == want and arr.shape[0] >= 1:
            batched = True
        else:
            raise ValueError(
                f"skill {self.name!r} expects an observation of shape {want} (or a batch "
                f"(B, {', '.join(map(str, want))})), got {arr.shape}"
            )
        p = next(self.network.parameters())
        if self._discrete_obs:
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"skill {self.name!r} expects integer observations")
            return torch.as_tensor(arr, dtype=torch.int64, device=p.device), batched
        if self._image_obs:
            return torch.as_tensor(arr, device=p.device), batched
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"skill {self.name!r} expects numeric observations, got {arr.dtype}")
        return torch.as_tensor(arr, device=p.device).to(p.dtype), batched

    def act(
        self,
        obs: Any,
        state: SkillState | None = None,
        *,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
        reward: Any = None,
        done: Any = None,
    ) -> tuple[np.ndarray, SkillState]:
        """One step: ``obs`` (``obs_shape``, or a batch ``(B, *obs_shape)``) -> ``(action, state)``.

        ``state=None`` starts a new episode. ``deterministic`` acts with the distribution's mode
        (the default); otherwise it samples with ``generator``. Box actions are clipped to the
        action bounds. In-context (RL²) skills also read the ``reward`` and ``done`` that the
        previous action produced (ignored when ``state`` is None).
        """
        x, batched = self._obs_tensor(obs)
        batch = x.shape[0]
        fresh = state is None
        if fresh:
            state = self.initial_state(batch)
        elif not isinstance(state, SkillState):
            raise ValueError(
                f"state must be None or the SkillState act returned, got {type(state)}"
            )
        elif state.layers[0][0].shape[0] != batch:
            raise ValueError(
                f"the state is for a batch of {state.layers[0][0].shape[0]}, the observation "
                f"for {batch}; start a new episode with state=None"
            )
        ctx: dict[str, Tensor] = {}
        if self.spec.in_context:
            p = next(self.network.parameters())
            r = torch.zeros(batch, dtype=p.dtype, device=p.device)
            d = torch.zeros(batch, dtype=torch.bool, device=p.device)
            if not fresh and reward is not None:
                r = r + torch.as_tensor(np.asarray(reward), dtype=p.dtype, device=p.device).reshape(
                    -1
                )
            if not fresh and done is not None:
                d = d | torch.as_tensor(np.asarray(done, bool), device=p.device).reshape(-1)
            ctx = {"prev_action": state.prev_action, "prev_reward": r, "prev_done": d}
        with torch.no_grad():
            out, layers = self.network.step(x, state.layers, **ctx)
            a = self.network.mode(out) if deterministic else self.network.sample(out, generator)
        new_state = SkillState(layers, a if self.spec.in_context else None)
        return self._env_action(a, batched), new_state

    def bound(self, action: Tensor) -> Tensor:
        """Box actions clipped to the action bounds (as ``act`` returns them); others as given."""
        if self._discrete_action:
            return action
        low = torch.as_tensor(self._low, dtype=action.dtype, device=action.device)
        high = torch.as_tensor(self._high, dtype=action.dtype, device=action.device)
        return torch.maximum(torch.minimum(action, high), low)

    def _env_action(self, a: Tensor, batched: bool) -> np.ndarray:
        out = a.detach().cpu().numpy()
        if self._discrete_action:
            out = out.astype(np.int64)
        else:
            out = np.clip(out, self._low, self._high).astype(self._action_dtype)
        return out if batched else np.asarray(out[0])
