"""Config loading: YAML + dotted overrides, type checks, typo suggestions, round trip, docs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from metarl.config import ConfigError, config_to_dict, dump_config, field_docs, load_config


@dataclass
class EnvCfg:
    name: str = "bandit"
    """environment name"""
    num_arms: int = 5
    """arms per bandit task"""
    sizes: list[int] = field(default_factory=lambda: [32, 32])
    """hidden sizes"""


@dataclass
class OptCfg:
    learning_rate: float = 1e-3
    """Adam learning rate"""
    kind: Literal["adam", "sgd"] = "adam"
    """optimizer"""
    clip: float | None = None
    """gradient-norm clip (None: no clipping)"""


@dataclass
class TrainCfg:
    seed: int = 0
    """random seed"""
    verbose: bool = False
    """print every iteration"""
    out: Path = Path("runs")
    """where runs go"""
    shape: tuple[int, int] = (2, 3)
    """a fixed-size pair"""
    env: EnvCfg = field(default_factory=EnvCfg)
    """environment settings"""
    ppo: OptCfg = field(default_factory=OptCfg)
    """optimiser settings"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_nested_yaml_then_overrides(tmp_path):
    src = write(tmp_path, "seed: 1\nenv:\n  name: nav2d\nppo:\n  learning_rate: 0.01\n")
    cfg = load_config(
        TrainCfg,
        src,
        ["ppo.learning_rate=3e-4", "seed=3", "verbose=true", "ppo.clip=0.5", "env.num_arms=7"],
    )
    assert cfg.seed == 3
    assert cfg.verbose is True
    assert cfg.env == EnvCfg(name="nav2d", num_arms=7)
    assert cfg.ppo.learning_rate == 3e-4 and isinstance(cfg.ppo.learning_rate, float)
    assert cfg.ppo.clip == 0.5
    # Defaults stay where neither the file nor an override says otherwise.
    assert cfg.ppo.kind == "adam" and cfg.shape == (2, 3)


def test_none_source_gives_defaults_and_null_override_sets_none():
    assert load_config(TrainCfg, None) == TrainCfg()
    cfg = load_config(TrainCfg, {"ppo": {"clip": 1.0}}, ["ppo.clip=null"])
    assert cfg.ppo.clip is None


def test_int_is_accepted_for_float():
    cfg = load_config(TrainCfg, {"ppo": {"learning_rate": 1}})
    assert cfg.ppo.learning_rate == 1.0 and isinstance(cfg.ppo.learning_rate, float)


@pytest.mark.parametrize(
    "source, overrides, key, type_name",
    [
        ({"seed": "three"}, [], "seed", "int"),
        ({"seed": 1.5}, [], "seed", "int"),
        ({}, ["verbose=1"], "verbose", "bool"),
        ({}, ["ppo.learning_rate=fast"], "ppo.learning_rate", "float"),
        ({"env": {"sizes": [32, "x"]}}, [], "env.sizes[1]", "int"),
        ({"env": 3}, [], "env", "EnvCfg"),
        ({"shape": [1, 2, 3]}, [], "shape", "tuple[int, int]"),
    ],
)
def test_type_errors_name_key_type_and_value(source, overrides, key, type_name):
    with pytest.raises(ConfigError) as err:
        load_config(TrainCfg, source, overrides)
    msg = str(err.value)
    assert f"'{key}'" in msg and type_name in msg, msg


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="'seed': expected int, got True"):
        load_config(TrainCfg, {"seed": True})


def test_typo_in_override_suggests_closest_key():
    with pytest.raises(ConfigError) as err:
        load_config(TrainCfg, None, ["ppo.learning_rat=3e-4"])
    assert str(err.value) == (
        "unknown config key 'ppo.learning_rat'; did you mean 'ppo.learning_rate'?"
    )


def test_typo_in_yaml_suggests_closest_key(tmp_path):
    src = write(tmp_path, "env:\n  nmae: nav2d\n")
    with pytest.raises(ConfigError, match=r"'env\.nmae'; did you mean 'env\.name'"):
        load_config(TrainCfg, src)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys here: .*seed.*ppo"):
        load_config(TrainCfg, {"zzzzzz": 1})


def test_override_into_a_scalar_and_malformed_override_are_errors():
    with pytest.raises(ConfigError, match="'seed' is a int, not a section"):
        load_config(TrainCfg, None, ["seed.x=1"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(TrainCfg, None, ["seed"])


def test_literal_is_enforced():
    assert load_config(TrainCfg, None, ["ppo.kind=sgd"]).ppo.kind == "sgd"
    expected = "'ppo.kind': expected one of 'adam', 'sgd', got 'rmsprop'"
    with pytest.raises(ConfigError, match=expected):
        load_config(TrainCfg, None, ["ppo.kind=rmsprop"])


def test_list_values_parse_from_yaml_and_overrides(tmp_path):
    assert load_config(TrainCfg, write(tmp_path, "env:\n  sizes: [8, 16, 4]\n")).env.sizes == [
        8,
        16,
        4,
    ]
    assert load_config(TrainCfg, None, ["env.sizes=[64]"]).env.sizes == [64]
    assert load_config(TrainCfg, None, ["env.sizes=[]"]).env.sizes == []
    assert load_config(TrainCfg, None, ["shape=[4, 5]"]).shape == (4, 5)
    with pytest.raises(ConfigError, match="'env.sizes': expected list"):
        load_config(TrainCfg, None, ["env.sizes=64"])


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(
        TrainCfg,
        None,
        ["seed=9", "ppo.learning_rate=1e-5", "ppo.kind=sgd", "env.sizes=[3, 1]", "out=/tmp/x"],
    )
    path = dump_config(cfg, tmp_path / "dump.yaml")
    assert load_config(TrainCfg, path) == cfg
    assert config_to_dict(cfg)["out"] == "/tmp/x"
    assert [p.name for p in tmp_path.iterdir()] == ["dump.yaml"]  # no temp file left behind


def test_field_docs_cover_nested_fields():
    docs = field_docs(TrainCfg)
    assert docs["seed"] == "random seed"
    assert docs["ppo"] == "optimiser settings"
    assert docs["ppo.learning_rate"] == "Adam learning rate"
    assert docs["env.sizes"] == "hidden sizes"
    assert set(docs) == {
        "seed",
        "verbose",
        "out",
        "shape",
        "env",
        "env.name",
        "env.num_arms",
        "env.sizes",
        "ppo",
        "ppo.learning_rate",
        "ppo.kind",
        "ppo.clip",
    }


def test_missing_required_field_is_named():
    @dataclass
    class NeedsLr:
        lr: float
        """learning rate"""

    with pytest.raises(ConfigError, match="missing required config key 'lr'"):
        load_config(NeedsLr, {})
    assert load_config(NeedsLr, {"lr": 2}).lr == 2.0


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(TrainCfg, write(tmp_path, "- 1\n- 2\n"))


@dataclass
class _Inner:
    a: int = 1
    b: int = 2


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=lambda: _Inner(a=10, b=20))


def test_partial_section_keeps_the_fields_own_default_not_the_class_defaults():
    assert load_config(_Outer, None, ["inner.a=5"]).inner == _Inner(a=5, b=20)
    assert load_config(_Outer, {"inner": {"b": 7}}).inner == _Inner(a=10, b=7)
    assert load_config(_Outer).inner == _Inner(a=10, b=20)
