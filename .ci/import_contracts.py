"""The import contracts of the project's layers, checked on the source (stdlib only).

    python .ci/import_contracts.py [ROOT]

exits 0 when every contract holds, 1 with one line per violating import otherwise. ``ROOT`` is
the repository root (default: the parent of this script's folder).

**Layers.** ``ssm`` <- ``metarl`` <- {``continual``, ``curricula``, ``skills``} <- ``experiments``
(scripts, and ``tests``). A module may import its own package and the layers below it; among the
three upper siblings only ``continual`` -> ``curricula`` is allowed (the continual layer reads
curricula's stage ids).

**No cycles inside metarl.** ``metarl``'s sub-units (each subpackage such as ``metarl.meta``,
each top-level module such as ``metarl.rollout``, and the package's own ``__init__``) must form
an acyclic graph: the strongly connected components of the unit graph must be single units.

**Which imports count.** Every ``import`` and ``from ... import`` anywhere in a file: at module
level, inside functions and methods (lazy imports hide a dependency, they do not remove it),
under ``try``; and ``importlib.import_module("...")`` / ``__import__("...")`` called with a
constant string. Relative imports are resolved against the importing module. ``from a import b``
counts as an import of module ``a.b`` where that is a module of the tree, else of ``a``.

**TYPE_CHECKING.** Imports under ``if TYPE_CHECKING:`` never run, so they cannot close an import
cycle: they are left out of the cycle check. They do count for the layer rules: an annotation
naming a class of a higher layer couples the lower layer to it all the same (the fix is a
``Protocol`` in the lower layer, not a type-only import).

Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``; those implicit parent
imports are not edges (every submodule would otherwise close a cycle through its package).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LAYERS = {
    "ssm": 0,
    "metarl": 1,
    "continual": 2,
    "curricula": 2,
    "skills": 2,
    "experiments": 3,
    "tests": 3,
}
"""layer of each top-level name; a package may import only its own and lower layers"""
PACKAGES = ("ssm", "metarl", "continual", "curricula", "skills")
"""the packages whose files are checked (experiments and tests are scripts)"""
SIBLING_ALLOWED = {("continual", "curricula")}
"""imports between packages of one layer that are allowed (importer, imported)"""
ACYCLIC = ("metarl",)
"""packages whose sub-units must not import each other in a cycle"""


@dataclass(frozen=True)
class Import:
    """One import statement (or constant-string dynamic import) found in a file."""

    path: Path
    line: int
    importer: str
    """the importing module, dotted"""
    imported: str
    """the imported module, dotted and absolute"""
    type_checking: bool
    """under ``if TYPE_CHECKING:`` (never runs)"""


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> Iterator[Path]:
    for pkg in PACKAGES:
        if (root / pkg).is_dir():
            yield from sorted(p for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_target(call: ast.Call) -> tuple[str, int] | None:
    """``(name, level)`` of ``importlib.import_module("x")`` / ``__import__("x")`` with a
    constant name (a relative ``import_module`` name is resolved only against the importer's
    package; an explicit ``package=`` other than ``__package__`` is not followed)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return None
    text = arg.value
    level = len(text) - len(text.lstrip("."))
    return text[level:], level


class _Finder(ast.NodeVisitor):
    def __init__(self, resolve):
        self.resolve = resolve  # (module or None, level, names) -> [absolute module]
        self.found: list[tuple[int, str, bool]] = []
        self._type_checking = 0

    def _add(self, line: int, targets: list[str]) -> None:
        self.found.extend((line, t, self._type_checking > 0) for t in targets)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.visit(node.test)
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self._add(node.lineno, [a.name for a in node.names])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = [a.name for a in node.names]
        self._add(node.lineno, self.resolve(node.module, node.level, names))

    def visit_Call(self, node: ast.Call) -> None:
        target = _dynamic_target(node)
        if target is not None:
            name, level = target
            if level:
                self._add(node.lineno, self.resolve(name or None, level, []))
            else:
                self._add(node.lineno, [name])
        self.generic_visit(node)


def find_imports(root: Path) -> list[Import]:
    """Every project import of every checked file (imports of other distributions dropped)."""
    files = list(source_files(root))
    modules = {module_name(root, p) for p in files}
    out: list[Import] = []
    for path in files:
        me = module_name(root, path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]

        def resolve(module: str | None, level: int, names: list[str], package=package):
            base = package
            if level:
                for _ in range(level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{module}" if module else base
            else:
                base = module or ""
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            # `from a import b, C`: b a submodule, C a name of a (so a itself runs too)
            return subs if subs and len(subs) == len(names) else [*subs, base]

        finder = _Finder(resolve)
        finder.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for line, target, tc in finder.found:
            if target.partition(".")[0] in LAYERS:
                out.append(Import(path, line, me, target, tc))
    return out


def _top(module: str) -> str:
    return module.partition(".")[0]


def layer_violation(imp: Import) -> str | None:
    """Why ``imp`` breaks the layer rules, or ``None``."""
    src, dst = _top(imp.importer), _top(imp.imported)
    if src == dst:
        return None
    if LAYERS[dst] > LAYERS[src]:
        return f"upward: {src} -> {dst}"
    if LAYERS[dst] == LAYERS[src] and (src, dst) not in SIBLING_ALLOWED:
        allowed = ", ".join(f"{a} -> {b}" for a, b in sorted(SIBLING_ALLOWED)) or "none"
        return f"sibling: {src} -> {dst}; allowed between siblings: {allowed}"
    return None


def unit(module: str) -> str:
    """``metarl.meta.train`` -> ``metarl.meta``; ``metarl`` (its ``__init__``) -> ``metarl``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> successors)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def cycle_violations(imports: list[Import]) -> list[tuple[Import, str]]:
    """The runtime imports between units of one cyclic component, inside each ACYCLIC package."""
    out: list[tuple[Import, str]] = []
    for pkg in ACYCLIC:
        edges = [
            i
            for i in imports
            if not i.type_checking
            and _top(i.importer) == pkg
            and _top(i.imported) == pkg
            and unit(i.importer) != unit(i.imported)
        ]
        graph: dict[str, set[str]] = {}
        for i in edges:
            graph.setdefault(unit(i.importer), set()).add(unit(i.imported))
        for comp in strongly_connected(graph):
            if len(comp) < 2:
                continue
            members = set(comp)
            why = f"cycle in {pkg}: {' <-> '.join(comp)}"
            out.extend(
                (i, why)
                for i in edges
                if unit(i.importer) in members and unit(i.imported) in members
            )
    return out


def violations(root: Path) -> list[str]:
    """One line per violating import, sorted by file and line."""
    imports = find_imports(root)
    found = [(i, why) for i in imports if (why := layer_violation(i)) is not None]
    found += cycle_violations(imports)
    lines = set()
    for i, why in found:
        where = i.path.relative_to(root).as_posix()
        tc = " [TYPE_CHECKING]" if i.type_checking else ""
        lines.add(
            (where, i.line, f"{where}:{i.line}: {i.importer!r} imports {i.imported!r}{tc} ({why})")
        )
    return [text for _, _, text in sorted(lines)]


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    if not any((root / pkg).is_dir() for pkg in PACKAGES):
        print(f"import contracts: {root} holds none of the packages {', '.join(PACKAGES)}")
        return 2
    bad = violations(root.resolve())
    for line in bad:
        print(line)
    if bad:
        print(f"import contracts: {len(bad)} violating import(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
