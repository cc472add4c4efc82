"""``ArchSpec``: the JSON description that rebuilds a skill's network, with no pickle and no
gymnasium.

A spec names the network family (``"ssm.SequencePolicy/1"``: the layout of
:class:`ssm.SequencePolicy`), the observation and action spaces as plain JSON, and the
constructor arguments. Spaces are written as::

    {"type": "box", "shape": [2], "dtype": "float32"}                     observations
    {"type": "box", "shape": [64, 64, 3], "dtype": "uint8"}               image observations
    {"type": "discrete", "n": 5}                                          observations or actions
    {"type": "box", "shape": [2], "low": [-0.1, -0.1], "high": [0.1, 0.1]} actions
    {"type": "multidiscrete", "nvec": [3, 4]}                             actions

Non-finite bounds are the strings ``"inf"`` and ``"-inf"`` (JSON has no infinities).

``condition`` is a constant vector appended to every (flattened) observation. A skill-conditioned
policy (DIAYN's ``π(a | s, z)``) becomes one library skill per ``z`` this way, all sharing one set
of parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .errors import SkillLibraryError

NETWORK = "ssm.SequencePolicy/1"
KINDS = ("s4d", "s5", "mamba", "gru", "lstm")
BOX_HEADS = ("gaussian", "tanh")
DTYPES = ("float32", "float64")
_OBS_DTYPES = ("float32", "float64", "uint8", "int64", "int32")


def _bound(value: float) -> float | str:
    return float(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _unbound(value: Any) -> float:
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a bound must be a number, 'inf' or '-inf', got {value!r}")
    return float(value)


# Sanity bounds: a damaged manifest must give an error, not a network that fills the memory.
MAX_WIDTH = 1 << 16
MAX_ELEMENTS = 1 << 24
_F32_MAX = float(np.finfo(np.float32).max)


def _positive_int(value: Any, what: str, limit: int = MAX_WIDTH) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{what} must be an int in [1, {limit}], got {value!r}")
    return value


def _shape(value: Any, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= 4:
        raise ValueError(f"{what} must be a list of 1 to 4 positive ints, got {value!r}")
    shape = [_positive_int(v, what) for v in value]
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise ValueError(f"{what} {shape} has more than {MAX_ELEMENTS} elements")
    return shape


def check_space(space: Any, role: str) -> dict[str, Any]:
    """Validate a JSON space (``role`` is ``"observation"`` or ``"action"``); returns a copy."""
    if not isinstance(space, Mapping) or "type" not in space:
        raise ValueError(f"the {role} space must be a JSON object with a 'type', got {space!r}")
    kind = space["type"]
    allowed = {
        "box": {"type", "shape", "dtype"} | ({"low", "high"} if role == "action" else set()),
        "discrete": {"type", "n"},
        "multidiscrete": {"type", "nvec"},
    }
    if kind not in allowed or (role == "observation" and kind == "multidiscrete"):
        ok = ["box", "discrete"] + (["multidiscrete"] if role == "action" else [])
        raise ValueError(f"the {role} space type must be one of {ok}, got {kind!r}")
    unknown = sorted(set(space) - allowed[kind])
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the {role} space {dict(space)!r}")
    if kind == "discrete":
        return {"type": "discrete", "n": _positive_int(space.get("n"), f"{role} space n")}
    if kind == "multidiscrete":
        return {"type": "multidiscrete", "nvec": _shape(space.get("nvec"), f"{role} nvec")}
    shape = _shape(space.get("shape"), f"{role} space shape")
    dtype = space.get("dtype", "float32")
    if dtype not in _OBS_DTYPES:
        raise ValueError(f"the {role} space dtype must be one of {_OBS_DTYPES}, got {dtype!r}")
    out: dict[str, Any] = {"type": "box", "shape": shape, "dtype": dtype}
    if role == "action":
        size = int(np.prod(shape))
        for key, default in (("low", "-inf"), ("high", "inf")):
            raw = space.get(key, [default] * size)
            if not isinstance(raw, (list, tuple)) or len(raw) != size:
                raise ValueError(f"action space {key} must be a list of {size} bounds, got {raw!r}")
            out[key] = [_bound(_unbound(v)) for v in raw]
        low, high = (np.array([_unbound(v) for v in out[k]]) for k in ("low", "high"))
        if (low > high).any():
            raise ValueError("action space low must not exceed high")
        bounds = np.concatenate([low, high])
        if (np.abs(bounds[np.isfinite(bounds)]) > _F32_MAX).any():
            raise ValueError("finite action bounds must fit in float32")
    return out


def space_to_json(space: Any, role: str = "action") -> dict[str, Any]:
    """A gymnasium space (``Box``, ``Discrete``, ``MultiDiscrete``) as a JSON space (an
    observation ``Box`` keeps no bounds: the network does not use them).

    This is the training side: it imports gymnasium, which the skill runtime never does.
    """
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"Discrete spaces must start at 0, got start={space.start}")
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "multidiscrete", "nvec": [int(v) for v in np.asarray(space.nvec).ravel()]}
    if isinstance(space, gym.spaces.Box):
        out = {"type": "box", "shape": [int(s) for s in space.shape]}
        out["dtype"] = np.dtype(space.dtype).name
        if role == "action":
            out["low"] = [_bound(v) for v in np.asarray(space.low, np.float64).ravel()]
            out["high"] = [_bound(v) for v in np.asarray(space.high, np.float64).ravel()]
        return out
    raise ValueError(f"unsupported space {space}; expected Box, Discrete or MultiDiscrete")


def is_image(space: Mapping[str, Any]) -> bool:
    """The rule of ``ssm.policy.is_image_space``: a uint8 ``(H, W, C)`` box with C in 1, 3, 4."""
    shape = space.get("shape", [])
    return (
        space["type"] == "box"
        and space.get("dtype") == "uint8"
        and len(shape) == 3
        and shape[-1] in (1, 3, 4)
    )


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a skill's network (see the module docstring)."""

    observation: dict[str, Any]
    """the observation space as JSON (before ``condition`` is appended)"""
    action: dict[str, Any]
    """the action space as JSON"""
    kind: str = "mamba"
    """sequence layer kind, one of ``ssm.KINDS``"""
    d_model: int = 64
    """width of the residual stream"""
    n_layers: int = 2
    """number of sequence layers"""
    in_context: bool = False
    """the network reads the previous action, reward and done (RL²)"""
    box_head: str = "gaussian"
    """``"gaussian"`` or ``"tanh"`` for Box actions"""
    encoder_hidden: int = 128
    """hidden width of the vector encoder"""
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of ``ssm.make_layer`` (``d_state``, ``expand``, ...)"""
    condition: tuple[float, ...] = ()
    """constant vector appended to each flattened observation (one-hot skill code)"""
    dtype: str = "float32"
    """parameter dtype"""
    network: str = NETWORK
    """the network family and its version"""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "observation", check_space(self.observation, "observation"))
            object.__setattr__(self, "action", check_space(self.action, "action"))
            object.__setattr__(self, "condition", tuple(float(c) for c in self.condition))
            object.__setattr__(self, "layer_kwargs", dict(self.layer_kwargs))
        except (TypeError, ValueError) as e:
            raise SkillLibraryError(f"invalid ArchSpec: {e}") from None
        problems = []
        if self.network != NETWORK:
            problems.append(f"network must be {NETWORK!r}, got {self.network!r}")
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name, limit in (
            ("d_model", MAX_WIDTH),
            ("n_layers", 256),
            ("encoder_hidden", MAX_WIDTH),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                problems.append(f"{name} must be an int in [1, {limit}], got {value!r}")
        if not isinstance(self.in_context, bool):
            problems.append(f"in_context must be a bool, got {self.in_context!r}")
        if self.box_head not in BOX_HEADS:
            problems.append(f"box_head must be one of {BOX_HEADS}, got {self.box_head!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not all(math.isfinite(c) for c in self.condition):
            problems.append("condition must be finite")
        if self.condition and is_image(self.observation):
            problems.append("condition is only supported for vector and Discrete observations")
        try:
            json.dumps(self.layer_kwargs, allow_nan=False)
        except (TypeError, ValueError):
            problems.append(f"layer_kwargs must be JSON-safe, got {self.layer_kwargs!r}")
        for key, value in self.layer_kwargs.items():
            if not isinstance(value, (bool, int, float, str)) or (
                isinstance(value, (int, float)) and abs(value) > MAX_WIDTH
            ):
                problems.append(
                    f"layer_kwargs[{key!r}] must be a str or a number within ±{MAX_WIDTH}"
                )
        if len(self.condition) > MAX_WIDTH:
            problems.append(f"condition has more than {MAX_WIDTH} values")
        if problems:
            raise SkillLibraryError("invalid ArchSpec: " + "; ".join(problems))

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["condition"] = list(self.condition)
        return d

    @classmethod
    def from_json(cls, data: Any) -> ArchSpec:
        """The inverse of :meth:`to_json`; unknown or missing keys raise ``SkillLibraryError``."""
        if not isinstance(data, Mapping):
            raise SkillLibraryError(f"an ArchSpec must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SkillLibraryError(f"unknown ArchSpec key(s) {unknown}; known: {sorted(names)}")
        for required in ("observation", "action"):
            if required not in data:
                raise SkillLibraryError(f"ArchSpec misses {required!r}")
        kwargs = dict(data)
        if "condition" in kwargs:
            if not isinstance(kwargs["condition"], (list, tuple)):
                raise SkillLibraryError("ArchSpec condition must be a list of numbers")
            kwargs["condition"] = tuple(kwargs["condition"])
        if not isinstance(kwargs.get("layer_kwargs", {}), Mapping):
            raise SkillLibraryError("ArchSpec layer_kwargs must be a JSON object")
        return cls(**kwargs)

    def spec_id(self) -> str:
        """A content hash: equal specs share one entry in a library's manifest."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def with_condition(self, condition: tuple[float, ...] | list[float] | np.ndarray) -> ArchSpec:
        d = self.to_json()
        d["condition"] = [float(c) for c in np.asarray(condition).ravel()]
        return ArchSpec.from_json(d)

    # -- derived --------------------------------------------------------------------------------
    @property
    def obs_shape(self) -> tuple[int, ...]:
        return () if self.observation["type"] == "discrete" else tuple(self.observation["shape"])

    @property
    def action_shape(self) -> tuple[int, ...]:
        a = self.action
        if a["type"] == "discrete":
            return ()
        if a["type"] == "multidiscrete":
            return (len(a["nvec"]),)
        return tuple(a["shape"])

    # -- from a policy (training side) ----------------------------------------------------------
    @classmethod
    def from_spaces(cls, observation_space: Any, action_space: Any, **kwargs: Any) -> ArchSpec:
        """A spec for ``ssm.SequencePolicy(observation_space, action_space, **kwargs)``."""
        obs = space_to_json(observation_space, "observation")
        return cls(obs, space_to_json(action_space, "action"), **kwargs)

    @classmethod
    def from_policy(cls, policy: Any, layer_kwargs: dict[str, Any] | None = None) -> ArchSpec:
        """The spec of an existing ``ssm.SequencePolicy``.

        ``layer_kwargs`` is read off the layers where not given (``d_state``, ``d_conv``,
        ``expand``, ``dt_rank``, ``bias``, ``conv_bias``, ``backend``, ``chunk``); the caller
        should still check the result with a strict ``load_state_dict`` (``skills`` does).
        """
        head = policy.head
        encoder = policy.encoder
        hidden = encoder.net[0].out_features if hasattr(encoder, "net") else 128
        param = next(policy.parameters())
        return cls.from_spaces(
            policy.observation_space,
            policy.action_space,
            kind=policy.kind,
            d_model=int(policy.d_model),
            n_layers=int(policy.n_layers),
            in_context=bool(policy.in_context),
            box_head="tanh" if getattr(head, "squash", False) else "gaussian",
            encoder_hidden=int(hidden),
            layer_kwargs=(
                dict(layer_kwargs)
                if layer_kwargs is not None
                else infer_layer_kwargs(policy.kind, policy.layers[0])
            ),
            dtype=str(param.dtype).removeprefix("torch."),
        )


def infer_layer_kwargs(kind: str, layer: Any) -> dict[str, Any]:
    """The ``make_layer`` keywords that shape a built layer (its initialisation aside)."""
    if kind == "s4d":
        return {"d_state": int(layer.d_state), "chunk": int(layer.chunk)}
    if kind == "s5":
        return {"d_state": int(layer.d_state)}
    if kind == "mamba":
        return {
            "d_state": int(layer.d_state),
            "d_conv": int(layer.d_conv),
            "expand": int(layer.d_inner // layer.d_model),
            "dt_rank": int(layer.dt_rank),
            "bias": layer.in_proj.bias is not None,
            "conv_bias": bool(layer.conv1d.bias.requires_grad),
            "backend": str(layer.backend),
        }
    return {}
