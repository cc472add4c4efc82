"""The one rule every command follows for its arguments: a config file, then ``key=value``
overrides, and what a resume may change. Light (stdlib only), so ``--help`` stays fast."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .config import ConfigError

__all__ = ["RESUME_PREFIXES", "check_resume_overrides", "is_override", "parse_config_args"]

RESUME_PREFIXES = ("run.", "logging.")
"""what a resume may change: where and how the run is kept and shown, never the experiment"""

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def is_override(arg: str) -> bool:
    """``key=value`` or ``a.b.c=value`` (the value may be a path with ``=`` or ``.yaml`` in it)."""
    return bool(_OVERRIDE.match(arg))


def parse_config_args(config: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``CONFIG [key=value ...]`` or just ``key=value ...``: a first argument shaped like an
    override (``curriculum=/path/my.yaml`` included) is one, not a config file."""
    overrides = list(overrides)
    if config is not None and is_override(config):
        return None, [config, *overrides]
    return config, overrides


def check_resume_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides a resume accepts (``run.*`` and ``logging.*``); anything else would change
    the experiment and raises :class:`metarl.config.ConfigError`."""
    overrides = list(overrides)
    for o in overrides:
        if not o.startswith(RESUME_PREFIXES):
            raise ConfigError(
                f"resume override {o!r} would change the experiment; only run.* and logging.* "
                "settings may change on resume"
            )
    return overrides
