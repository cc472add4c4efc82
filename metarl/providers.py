"""Providers that higher packages register through entry points (``metarl`` never imports them):
``metarl.commands`` (subcommands), ``metarl.skill_sources`` and ``metarl.skill_sinks``."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .config import ConfigError

__all__ = ["load_provider"]

INSTALL_HINT = (
    "Install the skills package (pip install -e . in this repository registers 'library')"
)


def load_provider(group: str, name: str, what: str, hint: str = INSTALL_HINT) -> Any:
    """The object the ``name`` entry point of ``group`` names; a :class:`ConfigError` naming the
    installed ones (and ``hint``) when there is none. ``what`` names it in the message."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    if name not in found:
        have = ", ".join(sorted(found)) or "none"
        raise ConfigError(
            f"no {what} {name!r} is installed (entry-point group {group!r}; installed: {have}). "
            f"{hint}"
        )
    return found[name].load()
