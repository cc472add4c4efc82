"""Typed dataclass configs: load from YAML or a dict, apply ``a.b=value`` overrides, dump back.

A config is a (possibly nested) ``@dataclass`` whose fields carry a one-line docstring each, CleanRL
style::

    @dataclass
    class TrainConfig:
        seed: int = 0
        \"\"\"random seed\"\"\"
        ppo: PPOConfig = field(default_factory=PPOConfig)
        \"\"\"PPO hyperparameters\"\"\"

``load_config(TrainConfig, "run.yaml", ["ppo.learning_rate=3e-4"])`` checks every value against
the field types (``int``, ``float``, ``bool``, ``str``, ``Optional``, ``Literal``, ``list``,
``tuple``, ``dict``, ``Path`` and nested dataclasses) and names the dotted key of anything wrong,
with "did you mean" suggestions for mistyped keys. ``field_docs`` reads the field docstrings back
out of the class source, for ``--help``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ssm.util import write_atomic  # re-exported: external code imports it from here

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "check_bounds",
    "config_to_dict",
    "dump_config",
    "field_docs",
    "load_config",
    "write_atomic",
]


class ConfigError(ValueError):
    """A config value or key that does not fit the config dataclass."""


def check_bounds(
    obj: Any,
    *,
    positive: Iterable[str] = (),
    nonnegative: Iterable[str] = (),
    unit_interval: Iterable[str] = (),
) -> None:
    """Raise ``ValueError`` naming the first field of the config ``obj`` outside its range:
    ``positive`` (> 0), ``nonnegative`` (>= 0) or ``unit_interval`` ([0, 1]). ``None`` passes
    (an optional field left unset); a config class calls this from its ``__post_init__``, so a
    negative step count or learning rate is refused when the config is read, before a run exists.
    """
    rules = ((positive, "> 0", 0.0, None, True), (nonnegative, ">= 0", 0.0, None, False))
    rules += ((unit_interval, "in [0, 1]", 0.0, 1.0, False),)
    for names, text, low, high, strict in rules:
        for name in names:
            value = getattr(obj, name)
            if value is None:
                continue
            bad = value <= low if strict else value < low
            if bad or (high is not None and value > high) or value != value:  # NaN too
                raise ValueError(f"{name} must be {text}, got {value!r}")


def load_config(
    cls: type[T], source: str | Path | Mapping | None = None, overrides: Iterable[str] = ()
) -> T:
    """An instance of the dataclass ``cls`` from a YAML file or dict, then dotted ``overrides``.

    ``source`` is a path to a YAML file (read with ``yaml.safe_load``), a mapping, or ``None`` for
    the defaults. Each override is ``"dotted.key=value"``; the value is parsed as a YAML scalar or
    flow collection, so ``"x=[1, 2]"``, ``"flag=false"`` and ``"opt=null"`` work.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    data = _read_source(source)
    for override in [overrides] if isinstance(overrides, str) else overrides:
        _apply_override(cls, data, override)
    return _build(cls, data, "")


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data for a config: dataclasses become dicts, tuples lists, paths strings."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` (a dataclass instance or a dict) as YAML to ``path``, atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    return write_atomic(path, text.encode())


def field_docs(cls: type) -> dict[str, str]:
    """``{dotted key: docstring}`` for every field of ``cls`` and of its nested dataclasses.

    The docstring of a field is the string literal right after it in the class body; a field
    without one maps to ``""``.
    """
    docs: dict[str, str] = {}
    _collect_docs(cls, "", docs)
    return docs


# --- reading and overriding -------------------------------------------------------------------


def _read_source(source: str | Path | Mapping | None) -> dict:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        data: Any = _copy_tree(source)
        where = "the config dict"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse config file {path}: {e}") from e
        where = str(path)
        if data is None:  # an empty file
            data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _apply_override(cls: type, data: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form 'dotted.key=value'")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse the value of override {override!r}: {e}") from e
    parts = key.split(".")
    _check_key_path(cls, parts)
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _check_key_path(cls: type, parts: list[str]) -> None:
    """Raise for a dotted key that names no field (dict-typed fields accept any sub-key)."""
    tp: Any = cls
    for i, part in enumerate(parts):
        dc = _dataclass_in(tp)
        if dc is None:
            if _origin(tp) in (dict, Mapping) or tp is dict:
                return
            parent = ".".join(parts[:i])
            raise ConfigError(
                f"config key '{parent}' is a {_type_name(tp)}, not a section; "
                f"cannot set '{'.'.join(parts)}'"
            )
        hints = _hints(dc)
        if part not in hints:
            raise ConfigError(_unknown_key_message(".".join(parts[: i + 1]), list(hints)))
        tp = hints[part]


def _unknown_key_message(dotted: str, valid_names: list[str]) -> str:
    prefix = dotted.rpartition(".")[0]
    valid = [f"{prefix}.{n}" if prefix else n for n in valid_names]
    close = difflib.get_close_matches(dotted, valid, n=3, cutoff=0.6)
    if close:
        hint = " or ".join(repr(c) for c in close)
        return f"unknown config key '{dotted}'; did you mean {hint}?"
    return f"unknown config key '{dotted}'; valid keys here: {', '.join(valid)}"


# --- building and type checking ---------------------------------------------------------------


def _build(cls: type, data: Mapping, prefix: str) -> Any:
    hints = _hints(cls)
    for key in data:
        if key not in hints:
            raise ConfigError(_unknown_key_message(_join(prefix, str(key)), list(hints)))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = _join(prefix, f.name)
        if f.name in data:
            value = data[f.name]
            if isinstance(value, Mapping) and f.default_factory is not dataclasses.MISSING:
                # a partial section overrides the field's own default, not the class defaults
                default = f.default_factory()
                if dataclasses.is_dataclass(default):
                    value = _merged(config_to_dict(default), value)
            kwargs[f.name] = _convert(value, hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}' ({_type_name(hints[f.name])})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a __post_init__ check of the config class itself
        where = f"'{prefix}'" if prefix else cls.__name__
        raise ConfigError(f"invalid config {where}: {e}") from e


def _merged(base: dict, update: Mapping) -> dict:
    """``base`` with ``update`` written over it, recursively for nested mappings."""
    out = dict(base)
    for k, v in update.items():
        out[k] = (
            _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
        )
    return out


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = _origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise _type_error(key, tp, value)
    if origin is Literal:
        for allowed in args:
            if type(value) is type(allowed) and value == allowed:
                return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"config key '{key}': expected one of {choices}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads exponents without a dot ("3e-4") as strings.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise _type_error(key, tp, value)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _type_error(key, tp, value)
        container = tuple if (origin or tp) is tuple else list
        if not args:
            return container(value)
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _type_error(key, tp, value)
            item_types = args
        else:
            item_types = (args[0],) * len(value)
        return container(
            _convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))
        )
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        if not args:
            return dict(value)
        kt, vt = args
        return {
            _convert(k, kt, f"{key}.{k}"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()
        }
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _type_error(key, tp, value)
    raise ConfigError(f"config key '{key}': unsupported field type {_type_name(tp)}")


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a dataclass (``from __future__ import annotations`` included)."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as e:
        raise TypeError(f"cannot resolve the field types of {cls.__name__}: {e}") from e
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass ``tp`` names, directly or as ``Optional[...]``; else ``None``."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if _origin(tp) is Union or _origin(tp) is types.UnionType:
        classes = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if len(classes) == 1:
            return classes[0]
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- field docstrings -------------------------------------------------------------------------


def _collect_docs(cls: type, prefix: str, docs: dict[str, str]) -> None:
    own: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # subclasses override the docs of their bases
        if dataclasses.is_dataclass(klass):
            own.update(_class_field_docs(klass))
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        docs[key] = own.get(f.name, "")
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            _collect_docs(sub, key, docs)


def _class_field_docs(cls: type) -> dict[str, str]:
    """Docstrings of the fields declared in ``cls``'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined in a REPL or built dynamically: no source to read
        return {}
    tree = ast.parse(source)
    class_def = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
    docs = {}
    body = class_def.body
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs
