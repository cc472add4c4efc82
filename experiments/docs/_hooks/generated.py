"""MkDocs hooks: the parts of the site that are generated at build time, so they cannot drift.

- ``<!-- metarl: ARGS -->`` on a line of its own becomes a text block with the output of
  ``metarl ARGS`` (e.g. ``sequence --help``, ``config --docs``), run in one child process for the
  whole site with ``COLUMNS=100``; ``<!-- metarl: ARGS | grep REGEX -->`` keeps the lines that
  match the (Python) regex. A command that exits non-zero fails the build.
- Every committed result summary ``experiments/results/*.md`` becomes a page
  ``results/<name>.md`` with the file's text as it is, listed in the nav under the entry of
  ``results/index.md``, and ``<!-- results-index -->`` becomes a table of them (the first heading
  of each and its files).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

_COMMAND = re.compile(r"^<!-- metarl: (.+?)(?: \| grep (.+?))? -->$", re.M)
_RESULTS_INDEX = "<!-- results-index -->"
_RESULTS = Path("experiments/results")

# runs each command in-process in one child (one import of the package instead of one per
# command) and prints {args: [exit code, output]} as JSON
_CHILD = """
import contextlib, io, json, shlex, sys
from metarl.cli import main
out = {}
for args in json.load(sys.stdin):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = main(shlex.split(args)) or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out[args] = [code, buf.getvalue()]
sys.stdout.write(json.dumps(out))
"""

_outputs: dict[str, str] = {}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _run_commands(commands: list[str], root: Path) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    if proc.returncode != 0:
        raise PluginError(f"running the metarl commands for the docs failed:\n{proc.stderr}")
    results = json.loads(proc.stdout)
    failed = {a: out for a, (code, out) in results.items() if code != 0}
    if failed:
        detail = "\n".join(f"metarl {a}:\n{out}" for a, out in failed.items())
        raise PluginError(f"metarl commands in the docs exited non-zero:\n{detail}")
    return {a: out for a, (_, out) in results.items()}


def _title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def on_config(config):
    pages = [{p.stem: f"results/{p.name}"} for p in sorted((_root(config) / _RESULTS).glob("*.md"))]

    def expand(items: list) -> list:
        out = []
        for item in items:
            if isinstance(item, dict):
                (title, value), *_ = item.items()
                if value == "results/index.md":
                    value = ["results/index.md", *pages]
                elif isinstance(value, list):
                    value = expand(value)
                item = {title: value}
            out.append(item)
        return out

    if config.nav:
        config.nav = expand(config.nav)
    return config


def on_files(files: Files, config) -> Files:
    root = _root(config)
    for path in sorted((root / _RESULTS).glob("*.md")):
        files.append(
            File.generated(config, f"results/{path.name}", content=path.read_text(encoding="utf-8"))
        )
    commands = sorted(
        {
            m.group(1)
            for f in files.documentation_pages()
            if not f.generated_by
            for m in _COMMAND.finditer(Path(f.abs_src_path).read_text(encoding="utf-8"))
        }
    )
    _outputs.clear()
    if commands:
        _outputs.update(_run_commands(commands, root))
    return files


def _results_index(root: Path, page_dir: str) -> str:
    rows = ["| result | files |", "| --- | --- |"]
    for path in sorted((root / _RESULTS).glob("*.md")):
        title = _title(path.read_text(encoding="utf-8"), path.stem)
        link = os.path.relpath(f"results/{path.name}", page_dir or ".")
        extra = sorted(p.name for p in path.parent.glob(f"{path.stem}.*") if p.suffix != ".md")
        names = ", ".join(f"`{n}`" for n in [path.name, *extra])
        rows.append(f"| [{title}]({link}) | {names} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.generated_by:  # the committed result pages: a note on where they live
        name = page.file.src_uri.split("/", 1)[1]
        return (
            f"!!! note\n    The committed file `experiments/results/{name}`, shown as it is.\n\n"
            + markdown
        )

    def block(match: re.Match) -> str:
        args, pattern = match.group(1), match.group(2)
        output, shown = _outputs[args].rstrip(), f"metarl {args}"
        if pattern is not None:
            output = "\n".join(ln for ln in output.splitlines() if re.search(pattern, ln))
            if not output:
                raise PluginError(f"no line of `metarl {args}` matches {pattern!r}")
            shown += f" | grep -E '{pattern}'"
        return f"```text\n$ {shown}\n{output}\n```"

    markdown = _COMMAND.sub(block, markdown)
    if _RESULTS_INDEX in markdown:
        page_dir = os.path.dirname(page.file.src_uri)
        markdown = markdown.replace(_RESULTS_INDEX, _results_index(_root(config), page_dir))
    return markdown
