"""Config: validated once, unknown keys / wrong types / out-of-range values name the key, paths resolve."""

from pathlib import Path

import pytest

from harness.config import ConfigError, SopmoeConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_shipped_config_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "config.yaml")
    assert cfg.btm.router_type == "layer_level"
    assert cfg.models.foundation.path.endswith("runs/demo/testbed/foundation")


def test_round_trip():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "config.yaml")
    assert SopmoeConfig.model_validate(cfg.to_dict()) == cfg


def test_relative_paths_resolve_against_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "models:\n  foundation:\n    path: m/f\n"))
    assert cfg.models.foundation.path == str((tmp_path / "m/f").resolve())


@pytest.mark.parametrize(
    "text, key",
    [
        ("ensemble:\n  foundation_wieght: 0.5\n", "ensemble.foundation_wieght: unknown key"),
        ("btm:\n  learning_rate: fast\n", "btm.learning_rate"),
        ("distill:\n  temperature: -1\n", "distill.temperature"),
        ("ensemble:\n  mix: average\n", "ensemble.mix"),
        ("ensemble:\n  foundation_weight: 0\n  sft_weight: 0\n", "both 0"),
        ("bogus: 1\n", "bogus: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert key in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_overrides_win_and_are_validated(tmp_path):
    p = write(tmp_path, "ensemble:\n  foundation_weight: 0.5\n")
    assert load_config(p, {"ensemble.foundation_weight": 0.9}).ensemble.foundation_weight == 0.9
    with pytest.raises(ConfigError, match="ensemble.foundation_weight"):
        load_config(p, {"ensemble.foundation_weight": -1})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "models: [unclosed\n"))


def test_save_writes_resolved_config(tmp_path):
    cfg = load_config(overrides={"merge.method": "ties"})
    cfg.save(tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml").merge.method == "ties"
