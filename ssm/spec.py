"""``PolicySpec``: the versioned JSON description from which :meth:`ssm.SequencePolicy.from_spec`
builds a policy, with no gymnasium and no pickle.

A spec names the network family and its version (``network = "ssm.SequencePolicy/1"``: the
layout of :class:`ssm.SequencePolicy`), the observation and action spaces as plain JSON, and the
architecture. Spaces are written as::

    {"type": "box", "shape": [2], "dtype": "float32"}                     observations
    {"type": "box", "shape": [64, 64, 3], "dtype": "uint8"}               image observations
    {"type": "discrete", "n": 5}                                          observations or actions
    {"type": "box", "shape": [2], "low": [-0.1, -0.1], "high": [0.1, 0.1]} actions
    {"type": "multidiscrete", "nvec": [3, 4]}                             actions

Non-finite bounds are the strings ``"inf"`` and ``"-inf"`` (JSON has no infinities).

``condition`` is a constant vector appended to every (flattened) observation. A skill-conditioned
policy (DIAYN's ``π(a | s, z)``) becomes one library skill per ``z`` this way, all sharing one set
of parameters.

Specs also arrive from other people's files, so every field is validated, sizes are bounded, and
each problem is a one-line ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .registry import KINDS

NORM_PLACEMENTS = ("pre", "post", "none")
"""LayerNorm placements of the residual stack (see :class:`PolicySpec` ``norm``)."""
NETWORK = "ssm.SequencePolicy/1"
"""the network family and layout version this code builds"""
NETWORKS = (NETWORK,)
"""every ``network`` value a spec may carry (older versions stay readable)"""
BOX_HEADS = ("gaussian", "tanh")
DTYPES = ("float32", "float64")
_OBS_DTYPES = ("float32", "float64", "uint8", "int64", "int32")

# Sanity bounds: a damaged file must give an error, not a network that fills the memory.
MAX_WIDTH = 1 << 16
MAX_ELEMENTS = 1 << 24
MAX_LAYERS = 256
MAX_ACTION_ELEMENTS = MAX_WIDTH
"""the largest Box action (its bounds are lists of this many numbers, filled in when absent)"""
_F32_MAX = float(np.finfo(np.float32).max)


def _bound(value: float) -> float | str:
    return float(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _unbound(value: Any) -> float:
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a bound must be a number, 'inf' or '-inf', got {value!r}")
    return float(value)


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
    if (
        not isinstance(kind, str)
        or kind not in allowed
        or (role == "observation" and kind == "multidiscrete")
    ):
        ok = ["box", "discrete"] + (["multidiscrete"] if role == "action" else [])
        raise ValueError(f"the {role} space type must be one of {ok}, got {kind!r}")
    unknown = sorted(map(str, set(space) - allowed[kind]))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the {role} space {dict(space)!r}")
    if kind == "discrete":
        return {"type": "discrete", "n": _positive_int(space.get("n"), f"{role} space n")}
    if kind == "multidiscrete":
        return {"type": "multidiscrete", "nvec": _shape(space.get("nvec"), f"{role} nvec")}
    shape = _shape(space.get("shape"), f"{role} space shape")
    dtype = space.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype not in _OBS_DTYPES:
        raise ValueError(f"the {role} space dtype must be one of {_OBS_DTYPES}, got {dtype!r}")
    out: dict[str, Any] = {"type": "box", "shape": shape, "dtype": dtype}
    if role == "action":
        size = int(np.prod(shape))
        if size > MAX_ACTION_ELEMENTS:
            raise ValueError(
                f"the action space shape {shape} has more than {MAX_ACTION_ELEMENTS} elements"
            )
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


def is_image(space: Mapping[str, Any]) -> bool:
    """A JSON space that the policy reads with its CNN: a uint8 ``(H, W, C)`` box, C in 1, 3, 4."""
    shape = space.get("shape", [])
    return (
        space["type"] == "box"
        and space.get("dtype") == "uint8"
        and len(shape) == 3
        and shape[-1] in (1, 3, 4)
    )


# -- gymnasium adapters (training side: gymnasium is imported only when these run) --------------
def space_to_json(space: Any, role: str = "action") -> dict[str, Any]:
    """A gymnasium space (``Box``, ``Discrete``, ``MultiDiscrete``) as a JSON space (an
    observation ``Box`` keeps no bounds: the network does not use them)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"Discrete spaces must start at 0, got start={space.start}")
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        if role == "action":
            return {
                "type": "multidiscrete",
                "nvec": [int(v) for v in np.asarray(space.nvec).ravel()],
            }
    elif isinstance(space, gym.spaces.Box):
        out = {"type": "box", "shape": [int(s) for s in space.shape]}
        out["dtype"] = np.dtype(space.dtype).name
        if role == "action":
            out["low"] = [_bound(v) for v in np.asarray(space.low, np.float64).ravel()]
            out["high"] = [_bound(v) for v in np.asarray(space.high, np.float64).ravel()]
        return out
    expected = (
        "Discrete, MultiDiscrete or Box"
        if role == "action"
        else "Box (vector or uint8 HxWxC image) or Discrete"
    )
    raise ValueError(f"unsupported {role} space {space}; expected {expected}")


def space_from_json(space: Mapping[str, Any]) -> Any:
    """The gymnasium space of a (validated) JSON space."""
    import gymnasium as gym

    if space["type"] == "discrete":
        return gym.spaces.Discrete(space["n"])
    if space["type"] == "multidiscrete":
        return gym.spaces.MultiDiscrete(space["nvec"])
    shape, dtype = tuple(space["shape"]), np.dtype(space["dtype"])
    if "low" in space:
        low = np.array([_unbound(v) for v in space["low"]]).reshape(shape)
        high = np.array([_unbound(v) for v in space["high"]]).reshape(shape)
    elif dtype == np.uint8:
        low, high = np.zeros(shape), np.full(shape, 255)
    else:
        low, high = np.full(shape, -np.inf), np.full(shape, np.inf)
    return gym.spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to build a :class:`ssm.SequencePolicy` (see the module docstring)."""

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
    """the network family and its layout version"""
    norm: str = "pre"
    """LayerNorm placement in the residual stack (:data:`NORM_PLACEMENTS`): ``pre``
    ``x + f(norm(x))``, ``post`` ``norm(x + f(x))``, ``none`` ``x + f(x)`` and no final norm.
    Left out of the JSON when ``pre``, so specs written before it keep their ids."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "observation", check_space(self.observation, "observation"))
            object.__setattr__(self, "action", check_space(self.action, "action"))
            if not isinstance(self.condition, (list, tuple, np.ndarray)):
                raise ValueError(f"condition must be a list of numbers, got {self.condition!r}")
            if len(self.condition) > MAX_WIDTH:
                raise ValueError(f"condition has more than {MAX_WIDTH} values")
            if any(isinstance(c, (bool, str)) for c in self.condition):
                raise ValueError("condition must be a list of numbers")
            object.__setattr__(self, "condition", tuple(float(c) for c in self.condition))
            if not isinstance(self.layer_kwargs, Mapping):
                raise ValueError(f"layer_kwargs must be a JSON object, got {self.layer_kwargs!r}")
            object.__setattr__(self, "layer_kwargs", dict(self.layer_kwargs))
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid PolicySpec: {e}") from None
        problems = []
        if self.norm not in NORM_PLACEMENTS:
            problems.append(f"norm must be one of {NORM_PLACEMENTS}, got {self.norm!r}")
        if self.network not in NETWORKS:
            problems.append(f"network must be one of {NETWORKS}, got {self.network!r}")
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            problems.append(
                f"unknown sequence layer kind {self.kind!r}; expected one of {sorted(KINDS)}"
            )
        for name, limit in (
            ("d_model", MAX_WIDTH),
            ("n_layers", MAX_LAYERS),
            ("encoder_hidden", MAX_WIDTH),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                problems.append(f"{name} must be an int in [1, {limit}], got {value!r}")
        if not isinstance(self.in_context, bool):
            problems.append(f"in_context must be a bool, got {self.in_context!r}")
        if not isinstance(self.box_head, str) or self.box_head not in BOX_HEADS:
            problems.append(f"box_head must be one of {BOX_HEADS}, got {self.box_head!r}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not all(math.isfinite(c) for c in self.condition):
            problems.append("condition must be finite")
        if self.condition and is_image(self.observation):
            problems.append("condition is only supported for vector and Discrete observations")
        for key, value in self.layer_kwargs.items():
            if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)):
                problems.append(f"layer_kwargs[{key!r}] must be a str, a bool or a number")
            elif isinstance(value, (int, float)) and not abs(value) <= MAX_WIDTH:
                problems.append(f"layer_kwargs[{key!r}] must be a number within ±{MAX_WIDTH}")
        if problems:
            raise ValueError("invalid PolicySpec: " + "; ".join(problems))

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["condition"] = list(self.condition)
        if d["norm"] == "pre":  # the layout every spec had before the option: same JSON, same id
            del d["norm"]
        return d

    @classmethod
    def from_json(cls, data: Any) -> PolicySpec:
        """The inverse of :meth:`to_json`; unknown or missing keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a PolicySpec must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(data) - names))
        if unknown:
            raise ValueError(f"unknown PolicySpec key(s) {unknown}; known: {sorted(names)}")
        missing = [f.name for f in fields(cls) if f.name not in data and f.name != "norm"]
        if missing:
            raise ValueError(f"PolicySpec misses key(s) {missing}")
        kwargs = dict(data)
        if not isinstance(kwargs["condition"], (list, tuple)):
            raise ValueError("PolicySpec condition must be a list of numbers")
        kwargs["condition"] = tuple(kwargs["condition"])
        return cls(**kwargs)

    def spec_id(self) -> str:
        """A content hash: equal specs share one entry in a skill library's manifest."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def with_condition(self, condition: tuple[float, ...] | list[float] | np.ndarray) -> PolicySpec:
        d = self.to_json()
        d["condition"] = [float(c) for c in np.asarray(condition).ravel()]
        return PolicySpec.from_json(d)

    # -- derived --------------------------------------------------------------------------------
    @property
    def obs_shape(self) -> tuple[int, ...]:
        """The shape of one observation (``()`` for Discrete)."""
        return () if self.observation["type"] == "discrete" else tuple(self.observation["shape"])

    @property
    def min_parameters(self) -> int:
        """A lower bound on the parameter count of the network this spec describes, computed
        without building it (layout ``ssm.SequencePolicy/1``): the vector encoder's two linear
        layers, the input projection, a LayerNorm per layer and the final one, and the value head;
        the sequence layers, the image encoder and the action head count as zero."""
        d, h = self.d_model, self.encoder_hidden
        total = 0
        if not is_image(self.observation):
            obs = self.observation
            d_in = obs["n"] if obs["type"] == "discrete" else int(np.prod(obs["shape"]))
            d_in += len(self.condition)
            total += d_in * h + h + h * d + d
        extra = self.prev_action_dim + 2 if self.in_context else 0
        total += (d + extra) * d + d  # in_proj
        if self.norm != "none":
            total += 2 * d * (self.n_layers + 1)  # the layer norms and the final norm
        return total + d + 1  # value head

    @property
    def action_shape(self) -> tuple[int, ...]:
        a = self.action
        if a["type"] == "discrete":
            return ()
        if a["type"] == "multidiscrete":
            return (len(a["nvec"]),)
        return tuple(a["shape"])

    @property
    def prev_action_dim(self) -> int:
        """The width of the previous action as the in-context input sees it (one-hot for
        discrete actions), whether or not the spec is ``in_context``."""
        a = self.action
        if a["type"] == "discrete":
            return a["n"]
        if a["type"] == "multidiscrete":
            return sum(a["nvec"])
        return int(np.prod(a["shape"]))

    # -- from gymnasium spaces (training side) --------------------------------------------------
    @classmethod
    def from_spaces(cls, observation_space: Any, action_space: Any, **kwargs: Any) -> PolicySpec:
        """The spec of ``ssm.SequencePolicy(observation_space, action_space, **kwargs)``
        (imports gymnasium; the rest of this module does not)."""
        obs = space_to_json(observation_space, "observation")
        return cls(obs, space_to_json(action_space, "action"), **kwargs)
