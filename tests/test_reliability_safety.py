"""Issue 13, class 4: the safety checks have no holes. The expert fingerprint covers every weight file transformers
loads (``*.safetensors``, ``*.bin``, sharded ``*.index.json``, a PEFT adapter, ``config.json``); a router whose card
records no fingerprint is refused unless ``--allow_missing_fingerprint``; remote code runs only behind
``--trust_remote_code``, and never through sopmoe's own adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.config import load_config
from harness.model_specs import parse_model_spec, plan
from sopmoe_models.errors import UserError
from sopmoe_models.experts import _fingerprint, fingerprint, legacy_fingerprint_matches
from sopmoe_models.routers import load_router
from sopmoe_models.routers.base import check_fingerprints
from tests.reliability import cli, one_line_error, save_router


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _folder(tmp_path, name, files: dict[str, bytes]) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "qwen3", "hidden_size": 32}')
    for fname, data in files.items():
        (d / fname).write_bytes(data)
    return d


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "pytorch_model-00001-of-00002.bin",
                                     "model.safetensors.index.json", "pytorch_model.bin.index.json",
                                     "adapter_config.json", "adapter_model.bin", "model-00001-of-00002.safetensors"])
def test_fingerprint_covers_every_weight_file_transformers_loads(tmp_path, weights):
    a = _folder(tmp_path, "a", {weights: b"weights A" * 100})
    b = _folder(tmp_path, "b", {weights: b"weights B" * 100})
    c = _folder(tmp_path, "c", {})
    assert len({fingerprint(a), fingerprint(b), fingerprint(c)}) == 3


def test_fingerprint_ignores_files_transformers_never_loads(tmp_path):
    a = _folder(tmp_path, "a", {"model.safetensors": b"w" * 10, "training_args.pt": b"x", "notes.txt": b"y"})
    b = _folder(tmp_path, "b", {"model.safetensors": b"w" * 10, "training_args.pt": b"z", "notes.txt": b"q"})
    assert fingerprint(a) == fingerprint(b)


def test_config_and_safetensors_folders_keep_their_old_fingerprint(tiny_pair_dirs, tmp_path):
    """Routers trained before .bin/index files counted still load: the hash of config + safetensors is unchanged."""
    f = Path(tiny_pair_dirs[0])
    assert fingerprint(f) == _fingerprint(f, legacy=True)
    sharded = tmp_path / "sharded"
    shutil.copytree(f, sharded)
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    old = _fingerprint(sharded, legacy=True)
    assert fingerprint(sharded) != old and legacy_fingerprint_matches(sharded, old)
    (sharded / "pytorch_model.bin").write_bytes(b"other weights")  # the old identity no longer covers everything
    assert not legacy_fingerprint_matches(sharded, old)


def test_a_router_without_fingerprints_is_refused_unless_allowed(capsys, tiny_pair, tiny_pair_dirs, tmp_path):
    folder = tmp_path / "router"
    save_router(tiny_pair, folder)
    card = json.loads((folder / "router.json").read_text())
    card["experts"]["sft"].pop("fingerprint")
    (folder / "router.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="records no fingerprint for the sft expert.*--allow_missing_fingerprint"):
        load_router(folder, tiny_pair)
    assert load_router(folder, tiny_pair, allow_missing_fingerprint=True).router_type == "token_level"
    f, s = tiny_pair_dirs
    base = ["generate", "--foundation", f, "--sft", s, "--model", "btm", "--router_checkpoint", folder, "--prompt",
            "您好", "--max_new_tokens", "2"]
    one_line_error(capsys, *base, contains="--allow_missing_fingerprint")
    assert cli(capsys, *base, "--allow_missing_fingerprint")[0] == 0


def test_a_router_beside_experts_without_a_folder_is_refused(tiny_pair, tmp_path):
    from sopmoe_models.experts import ExpertPair

    folder = tmp_path / "router"
    save_router(tiny_pair, folder)
    card = json.loads((folder / "router.json").read_text())
    in_memory = ExpertPair(tiny_pair.foundation, tiny_pair.sft, tiny_pair.tokenizer, tiny_pair.vocab_size)
    with pytest.raises(UserError, match="has no folder to fingerprint"):
        check_fingerprints(card, in_memory, "r")
    check_fingerprints(card, in_memory, "r", allow_missing_fingerprint=True)


@pytest.fixture
def cfg(tiny_pair_dirs):
    f, s = tiny_pair_dirs
    return load_config(None, {"models.foundation.path": str(f), "models.sft.path": str(s)})


def test_remote_code_only_behind_the_flag(cfg, tiny_pair_dirs):
    f = tiny_pair_dirs[0]
    for text in (f"mine=hf:pretrained={f},trust_remote_code=True", "foundation=foundation:trust_remote_code=true"):
        with pytest.raises(UserError, match="pass --trust_remote_code"):
            plan(parse_model_spec(text), cfg)
        assert plan(parse_model_spec(text), cfg, allow_remote_code=True).model_args["trust_remote_code"] is True
    assert plan(parse_model_spec(f"mine=hf:pretrained={f},trust_remote_code=false"), cfg).problem is None
    for text in ("d=distill:trust_remote_code=True", "e=ensemble:trust_remote_code=True"):
        with pytest.raises(UserError, match="never runs remote code"):
            plan(parse_model_spec(text), cfg, allow_remote_code=True)


def test_evaluate_cli_refuses_remote_code_without_the_flag(capsys, tiny_pair_dirs, tmp_path):
    f, s = tiny_pair_dirs
    one_line_error(capsys, "evaluate", "--foundation", f, "--sft", s, "--models",
                   f"mine=hf:pretrained={f},trust_remote_code=True", "--output_dir", tmp_path / "run",
                   "--log-file", tmp_path / "e.log", contains="--trust_remote_code")
    assert not (tmp_path / "run").exists()


def test_sopmoe_distill_adapter_never_enables_remote_code(tiny_pair_dirs):
    from sopmoe_models.adapters.distill import DistillLMEval

    with pytest.raises(ValueError, match="never enables trust_remote_code"):
        DistillLMEval(pretrained=str(tiny_pair_dirs[0]), trust_remote_code=True)
