"""``metarl.load(run_dir)``: what a run learned, as an agent that acts, the way Stable-Baselines3
users expect ``load(...).predict(obs)``.

    agent = metarl.load("runs/quickstart-1a2b3c4d")
    state = None
    obs, _ = env.reset(seed=0)
    action, state = agent.act(obs, state)                  # one env (unbatched obs)
    action, state = agent.act(obs_batch, state, episode_start=dones)   # a vector env

Any run whose trainer has one policy works (``metarl train``: PPO, RL², the MAML family;
``metarl sequence``: the continual learner's policy, progressive columns included): every
checkpoint records the policy's spec (versioned JSON) and weights, so nothing is rebuilt from the
run's config or code. The checkpoint is read with ``torch.load(weights_only=True)`` and the spec
is validated, so a run directory from someone else cannot execute code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssm.policy import SequencePolicy
from ssm.spec import PolicySpec

from .run_dir import CheckpointError, RunDir

__all__ = ["Agent", "load"]


@dataclass
class Agent:
    """A trained policy and how to feed it. ``act`` is also available as ``predict``."""

    policy: nn.Module
    """the network (``ssm.SequencePolicy`` or ``ssm.progressive.ProgressivePolicy``), eval mode"""
    run: Path
    """the run directory it came from"""
    kind: str
    """the run's kind: train, sequence"""
    global_step: int
    """env steps of training at the checkpoint"""
    spec: dict[str, Any]
    """the policy's spec as JSON (observation and action spaces included)"""

    @property
    def in_context(self) -> bool:
        """RL² policies also take the previous action, reward and done (see :meth:`act`)."""
        return bool(getattr(self.policy, "in_context", False))

    def initial_state(self, batch: int = 1) -> Any:
        return self.policy.initial_state(batch)

    @torch.inference_mode()
    def act(
        self,
        obs: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        prev_action: Any = None,
        prev_reward: Any = None,
        prev_done: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, Any]:
        """One step: ``obs`` (one observation, or a batch ``(B, *obs_shape)``) and the recurrent
        ``state`` (None: a fresh one) -> ``(action, new state)``. ``episode_start`` (bool per env)
        zeroes the state of envs whose episode just began. ``deterministic``: the distribution's
        mode, else a sample. In-context (RL²) policies read ``prev_action``, ``prev_reward`` and
        ``prev_done`` (zeros when omitted: the start of a trial)."""
        obs_shape = tuple(self._column["observation"].get("shape", ()))
        x = torch.as_tensor(np.asarray(obs), dtype=self._dtype)
        single = tuple(x.shape) == obs_shape
        if single:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != obs_shape:
            raise ValueError(
                f"expected an observation of shape {obs_shape} or a batch (B, *{obs_shape}), got "
                f"{tuple(np.shape(obs))}"
            )
        b = x.shape[0]
        if state is None:
            state = self.policy.initial_state(b)
        reset = None
        if episode_start is not None:
            reset = torch.as_tensor(np.asarray(episode_start, dtype=bool)).reshape(b)
        kwargs: dict[str, Tensor] = {}
        if self.in_context:
            kwargs = self._previous(b, prev_action, prev_reward, prev_done)
        out, state = self.policy.step(x, state, reset, **kwargs)
        action = self.policy.mode(out) if deterministic else self.policy.sample(out, generator)
        action = action.cpu().numpy()
        return (action[0] if single else action), state

    predict = act

    @property
    def _column(self) -> dict[str, Any]:
        return self.spec.get("column", self.spec)  # progressive: every column has the spaces

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.policy.parameters()).dtype

    def _previous(self, b: int, action: Any, reward: Any, done: Any) -> dict[str, Tensor]:
        a_spec = self._column["action"]
        if action is None:
            shape = (b,) if a_spec.get("type") == "discrete" else (b, *a_spec.get("shape", ()))
            kind = torch.long if a_spec.get("type") == "discrete" else self._dtype
            prev_action = torch.zeros(shape, dtype=kind)
        else:
            prev_action = torch.as_tensor(np.asarray(action))
            if prev_action.dim() == 0 or (
                a_spec.get("type") != "discrete" and prev_action.dim() == len(a_spec["shape"])
            ):
                prev_action = prev_action.unsqueeze(0)
        zeros = torch.zeros(b, dtype=self._dtype)
        return {
            "prev_action": prev_action,
            "prev_reward": zeros
            if reward is None
            else torch.as_tensor(np.asarray(reward), dtype=self._dtype).reshape(b),
            "prev_done": zeros
            if done is None
            else torch.as_tensor(np.asarray(done), dtype=self._dtype).reshape(b),
        }


def load(run_dir: str | Path, checkpoint: str = "latest") -> Agent:
    """The policy of a run directory's checkpoint (default: the latest) as an :class:`Agent`."""
    run = RunDir.open(run_dir)
    kind = run.kind
    if kind == "population":
        raise CheckpointError(
            f"{run.path} is a `metarl population` run: it holds several agents, not one policy; "
            "export them with `metarl export-skills`"
        )
    state = run.load_checkpoint(checkpoint)
    record = state.get("policy")
    if record is None:
        if kind != "train":
            raise CheckpointError(
                f"{run.path}'s checkpoint predates policy records (written before this version); "
                "resume the run for one iteration to write a new checkpoint"
            )
        return _from_train_config(run, state)
    policy = _build(record)
    return Agent(
        policy=policy,
        run=run.path,
        kind=kind,
        global_step=int(state["trainer"].get("global_step", 0)),
        spec=json.loads(record["spec"]),
    )


def _build(record: Any) -> nn.Module:
    if not isinstance(record, dict) or not {"kind", "spec", "state"} <= set(record):
        raise CheckpointError("the checkpoint's policy record must hold kind, spec and state")
    try:
        data = json.loads(record["spec"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's policy spec is not JSON: {e}") from None
    try:
        if record["kind"] == "sequence":
            policy = SequencePolicy.from_spec(PolicySpec.from_json(data))
        elif record["kind"] == "progressive":
            from ssm.progressive import ProgressivePolicy, ProgressiveSpec

            policy = ProgressivePolicy.from_spec(ProgressiveSpec.from_json(data))
        else:
            raise ValueError(f"unknown policy kind {record['kind']!r}")
        policy.load_state_dict(record["state"])
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's policy cannot be built: {e}") from None
    return policy.eval()


def _from_train_config(run: RunDir, state: dict) -> Agent:
    """Checkpoints of ``metarl train`` runs written before policy records: rebuilt from the
    run's config."""
    from .train_config import TrainConfig, build_family, build_policy

    cfg = run.load_config(TrainConfig)
    policy = build_policy(cfg, build_family(cfg))
    policy.load_state_dict(state["trainer"]["policy"])
    return Agent(
        policy=policy.eval(),
        run=run.path,
        kind="train",
        global_step=int(state["trainer"].get("global_step", 0)),
        spec=policy.spec.to_json(),
    )
