"""The population opens skills through the ``metarl.skill_sources`` entry-point group, never by
importing ``skills``; an unknown provider is a config error that names the installed ones."""

from __future__ import annotations

import pytest

from metarl.config import ConfigError
from metarl.population.cli import main
from metarl.population.skill_source import SKILL_SOURCES, open_skill_source, skill_source_opener


def test_the_skills_package_registers_the_library_provider():
    from skills.source import open_library

    assert skill_source_opener("library") is open_library


def test_open_skill_source_opens_a_skill_library(tmp_path):
    from skills import SkillLibrary

    SkillLibrary.create(tmp_path / "lib")
    source = open_skill_source(str(tmp_path / "lib"))
    assert isinstance(source, SkillLibrary) and source.list() == []


def test_an_unknown_provider_is_a_config_error_naming_the_installed_ones():
    with pytest.raises(ConfigError, match=rf"no skill source 'nope'.*{SKILL_SOURCES}.*library"):
        open_skill_source("/nowhere", provider="nope")


def test_the_population_command_rejects_an_unknown_provider_before_writing_a_run(tmp_path, capsys):
    code = main(
        [
            f"run.root={tmp_path}",
            "skills.library=/nowhere",
            "skills.source=nope",
            "agents=[{init_skill: a}]",
        ]
    )
    assert code == 2
    assert "no skill source 'nope'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
