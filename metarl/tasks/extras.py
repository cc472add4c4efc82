"""Optional dependencies (Meta-World, Procgen, MuJoCo), imported only when a family needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "ssm-lifelong-metarl"


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the ``pip install`` that adds it."""


def install_command(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, extra: str, family: str) -> ModuleType:
    """``import module``, or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"task family {family!r} needs the {module!r} package ({e}); "
            f"install it with: {install_command(extra)}"
        ) from e
