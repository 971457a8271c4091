"""Issue 13, class 5: NaN and infinity are refused wherever a number comes in: the config, every float flag, model
specs, merge grids, expert weights in ``check`` and router weights (tolerances and baselines: tests/
test_reliability_regress.py)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.config import ConfigError, load_config
from harness.model_specs import parse_model_spec
from sopmoe_models.errors import UserError
from tests.reliability import cli, one_line_error, write_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("text, key", [
    ("btm:\n  learning_rate: .inf\n", "btm.learning_rate"),
    ("merge:\n  scale: .nan\n", "merge.scale"),
    ("ensemble:\n  foundation_weight: .nan\n", "ensemble.foundation_weight"),
    ("distill:\n  temperature: -.inf\n", "distill.temperature"),
])
def test_config_refuses_nan_and_infinity(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{key}: Input should be a finite number"):
        load_config(path)
    with pytest.raises(ConfigError, match=f"{key} \\(given as a flag or model argument\\)"):
        load_config(None, {key: float("nan")})


@pytest.mark.parametrize("argv, flag", [
    (["train-router", "--learning_rate", "nan"], "--learning_rate"),
    (["generate", "--prompt", "x", "--foundation_weight", "inf"], "--foundation_weight"),
    (["merge", "--temperature=-inf"], "--temperature"),
    (["distill", "--temperature", "NaN"], "--temperature"),
    (["sweep", "--cache_gb", "inf"], "--cache_gb"),
])
def test_float_flags_refuse_nan_and_infinity_in_one_line(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        cli(capsys, *argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and flag in err and "not a finite number" in err


def test_model_specs_and_merge_grids_refuse_nan(capsys, tmp_path, tiny_pair_dirs, tiny_data_dir):
    for text in ("e=ensemble:foundation_weight=nan", "m=merge:scale=inf"):
        with pytest.raises(UserError, match="not a finite number"):
            parse_model_spec(text)
    with pytest.raises(UserError):
        parse_model_spec("ensemble@nan")
    cfg = write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir)
    one_line_error(capsys, "merge", "--config", cfg, "--method", "ties", "--auto", "--grid", "density=0.2,nan",
                   "--out", tmp_path / "m", "--log-file", tmp_path / "m.log", contains="finite number")


def test_check_refuses_infinite_expert_weights(capsys, tmp_path, tiny_pair_dirs, tiny_data_dir):
    sft = tmp_path / "sft_inf"
    shutil.copytree(tiny_pair_dirs[1], sft)
    weights = load_file(str(sft / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("inf")
    save_file(weights, str(sft / "model.safetensors"), metadata={"format": "pt"})
    cfg = write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir, models={"sft": {"path": str(sft)}})
    rc, _, err = cli(capsys, "check", "--config", cfg)
    assert rc == 1 and err.count("\n") == 1
    assert "weights load: the sft weights hold NaN or infinity" in err and name in err


def test_a_router_with_nan_weights_is_refused(capsys, tiny_pair, tiny_pair_dirs, tmp_path):
    from sopmoe_models.routers import build_router

    router = build_router("token_level", tiny_pair, hidden_size=8)
    with torch.no_grad():
        next(router.parameters()).fill_(float("nan"))
    router.save_router(tmp_path / "nan")
    f, s = tiny_pair_dirs
    one_line_error(capsys, "generate", "--foundation", f, "--sft", s, "--model", "btm", "--router_checkpoint",
                   tmp_path / "nan", "--prompt", "您好", "--max_new_tokens", "3", contains="hold NaN or infinity")
