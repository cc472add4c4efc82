"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing snippet,
a docstring the handler cannot parse or a ``metarl`` command that fails all fail the build), and
the generated parts are there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    pytest.importorskip(module, reason="the docs extra is not installed (pip install -e '.[docs]')")


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = build(ROOT / "mkdocs.yml", out)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


def test_site_builds_in_strict_mode_with_every_page(site):
    for path in [
        "",
        "getting-started",
        "concepts",
        "curriculum-format",
        "cli",
        "results",
        "api/ssm",
        "api/metarl/meta",
        "api/continual",
        "api/curricula",
        "api/skills",
    ]:
        assert (site / path / "index.html").is_file(), path
    tutorials = sorted((ROOT / "experiments/tutorials").glob("*.py"))
    assert len(tutorials) == 5


def test_api_reference_renders_docstrings_and_links_sphinx_roles(site):
    meta = page(site, "api/metarl/meta")
    assert 'id="metarl.meta.MAML"' in meta and "MAML for RL (Finn, Abbeel &amp; Levine" in meta
    curricula = page(site, "api/curricula")
    # ":func:`load_curriculum`" in a docstring became a link to the function's entry
    link = r'href="#curricula\.(curriculum\.)?load_curriculum"><code>load_curriculum</code></a>'
    assert re.search(link, curricula)
    for path in ["api/ssm", "api/metarl/meta", "api/continual", "api/skills"]:
        html = page(site, path)
        assert ":class:" not in html and ":func:" not in html, path


def test_cli_page_holds_the_commands_own_help(site):
    cli = page(site, "cli")
    assert "usage: metarl sequence" in cli and "usage: metarl adapt-eval" in cli
    assert "regularizer.strength" in cli  # `metarl sequence --docs`
    assert "nav2d_quadrant_distributions" in cli  # `metarl sequence --list`


def test_tutorial_pages_include_their_scripts(site):
    for name, script in [
        ("curriculum", "own_curriculum.py"),
        ("maml", "maml_own_policy.py"),
        ("ewc", "ewc_own_loop.py"),
        ("skills", "skills_own_agent.py"),
        ("ray", "ray_cluster.py"),
    ]:
        html = page(site, f"tutorials/{name}")
        first_line = (ROOT / "experiments/tutorials" / script).read_text().splitlines()[0]
        assert first_line.strip('"').split(":")[0] in html, name
        assert "--8&lt;--" not in html and "--8<--" not in html, name  # markers stripped


def test_every_committed_result_summary_is_a_page(site):
    index = page(site, "results")
    for md in sorted((ROOT / "experiments/results").glob("*.md")):
        assert (site / "results" / md.stem / "index.html").is_file(), md.name
        assert f'href="{md.stem}/"' in index, md.name


def test_a_failing_metarl_command_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\n<!-- metarl: no-such-command -->\n")
    config = tmp_path / "mkdocs.yml"
    hook = ROOT / "experiments/docs/_hooks/generated.py"
    config.write_text(f"site_name: x\ndocs_dir: docs\nhooks: ['{hook}']\n")
    proc = build(config, tmp_path / "site")
    assert proc.returncode != 0
    assert "metarl no-such-command" in proc.stderr and "invalid choice" in proc.stderr
