"""A griffe extension for the API reference: the project's docstrings cross-reference with Sphinx
roles (``:class:`Curriculum```, ``:func:`metarl.harness.run_loop```), which Markdown would show
verbatim. Each role becomes a code span that links to the object's entry in the reference, when
the name resolves and the object is documented there, and stays plain code otherwise (an
*optional* autoref, so ``mkdocs build --strict`` does not fail on names the reference leaves out).

RST's ``text::`` before an indented literal block becomes ``text:`` (the block itself is already
Markdown's indented code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj):`([^`]+)`")
_LITERAL_BLOCK = re.compile(r"::(\n\s*\n)")


def _identifier(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``'s scope, or None."""
    head, _, rest = target.partition(".")
    try:
        base = obj.resolve(head)
    except Exception:  # griffe.NameResolutionError: not a name of this scope
        # an absolute path (``metarl.harness.run_loop``) or an outside name (``torch.Tensor``)
        return target if re.fullmatch(r"[A-Za-z_][\w.]*", target) else None
    return f"{base}.{rest}" if rest else base


def _rewrite(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match) -> str:
        target = match.group(2).strip()
        short = target.startswith("~")
        target = target.lstrip("~").lstrip(".").removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if short else target
        identifier = _identifier(obj, target)
        if identifier is None:
            return f"`{shown}`"
        return f'<autoref identifier="{identifier}" optional>`{shown}`</autoref>'

    return _LITERAL_BLOCK.sub(r":\1", _ROLE.sub(link, text))


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles of every docstring in a package once it has loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
