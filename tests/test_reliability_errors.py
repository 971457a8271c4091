"""Issue 13, class 7: a user mistake is one line naming the file, key or flag (exit 2; ``check`` exits 1 with one
line), never a traceback; odd text in prompts, ids and categories is printed, not parsed as markup; the JSONL reader
splits on ``\\n`` only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sopmoe_models.data import Example, load_jsonl, write_jsonl
from tests.reliability import cli, one_line_error, save_router, write_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# --- check ---------------------------------------------------------------------------------------------------------
def _without_tokenizer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            p.unlink()
    return dst


def test_check_fails_when_both_tokenizers_are_missing(capsys, tmp_path, tiny_pair_dirs, tiny_data_dir):
    f = _without_tokenizer(Path(tiny_pair_dirs[0]), tmp_path / "f")
    s = _without_tokenizer(Path(tiny_pair_dirs[1]), tmp_path / "s")
    cfg = write_config(tmp_path / "c.yaml", (f, s), tiny_data_dir)
    rc, out, err = cli(capsys, "check", "--config", cfg)
    assert rc == 1 and err.count("\n") == 1 and "has no tokenizer" in err and str(f) in err
    assert "all checks passed" not in out


def test_check_and_generate_refuse_a_device_that_does_not_exist(capsys, tmp_path, tiny_pair_dirs, tiny_data_dir):
    banana = write_config(tmp_path / "b.yaml", tiny_pair_dirs, tiny_data_dir, models={"foundation": {"device": "banana"}})
    for command in ("check", "generate"):
        one_line_error(capsys, command, "--config", banana, "--prompt" if command == "generate" else "--no-load",
                       *(["x"] if command == "generate" else []), contains=("models.foundation.device", "banana"))
    gpu = write_config(tmp_path / "g.yaml", tiny_pair_dirs, tiny_data_dir, models={"sft": {"device": "cuda:7"}})
    rc, out, err = cli(capsys, "check", "--config", gpu)
    assert rc == 1 and "devices: device 'cuda:7' is not on this machine" in err and "all checks passed" not in out
    one_line_error(capsys, "generate", "--config", gpu, "--prompt", "x", contains="'cuda:7' is not on this machine")


def test_check_verifies_the_configured_router(capsys, tmp_path, tiny_pair, tiny_pair_dirs, tiny_data_dir):
    save_router(tiny_pair, tmp_path / "btm")
    cfg = write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir, btm={"output_dir": str(tmp_path / "btm")})
    rc, out, _ = cli(capsys, "check", "--config", cfg, "--no-load")
    assert rc == 0 and "trained beside these experts" in out
    (tmp_path / "btm" / "router.json").write_text("{broken", encoding="utf-8")
    rc, _, err = cli(capsys, "check", "--config", cfg, "--no-load")
    assert rc == 1 and "router: " in err and "router.json: not valid JSON" in err


# --- router checkpoints --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("card, message", [
    ("{broken", "not valid JSON"),
    ("[]", "the top level is not an object"),
    ('{"kwargs": {}}', "'type' (the router type) is missing"),
    ('{"type": "token_level", "kwargs": [1]}', "'kwargs' is not an object"),
    ('{"type": "token_level", "kwargs": {"banana": 1}, "experts": {}}', "'kwargs' do not fit"),
    ('{"type": "token_level", "experts": {"sft": 3}}', "'experts.sft' is not an object"),
    ('{"type": "token_level", "weights": "../../etc/passwd"}', "'weights' must be a file name"),
    ('{"type": "moe"}', "unknown router type 'moe'"),
])
def test_a_broken_router_card_is_one_line(capsys, tmp_path, tiny_pair, tiny_pair_dirs, card, message):
    folder = tmp_path / "r"
    save_router(tiny_pair, folder)
    good = json.loads((folder / "router.json").read_text())
    (folder / "router.json").write_text(card, encoding="utf-8")
    if "banana" in card:  # keep the fingerprints so the kwargs are reached
        (folder / "router.json").write_text(json.dumps({**json.loads(card), "experts": good["experts"]}))
    f, s = tiny_pair_dirs
    one_line_error(capsys, "generate", "--foundation", f, "--sft", s, "--model", "btm", "--router_checkpoint",
                   folder / "best_router.safetensors", "--prompt", "您好", "--allow_missing_fingerprint",
                   contains=message)


def test_truncated_or_swapped_router_weights_are_one_line(capsys, tmp_path, tiny_pair, tiny_pair_dirs):
    folder = tmp_path / "r"
    weights = save_router(tiny_pair, folder)
    f, s = tiny_pair_dirs
    base = ["generate", "--foundation", f, "--sft", s, "--model", "btm", "--router_checkpoint", folder, "--prompt", "您好"]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    one_line_error(capsys, *base, contains="not the weights its router.json was written with")
    card = json.loads((folder / "router.json").read_text())
    card.pop("weights_sha256")  # a card written before sha256 was recorded: the file itself is checked
    (folder / "router.json").write_text(json.dumps(card))
    one_line_error(capsys, *base, contains=("not a readable safetensors file", "truncated"))


# --- markup ----------------------------------------------------------------------------------------------------------
def test_markup_in_prompts_ids_and_categories_is_printed_not_parsed(capsys, tmp_path, tiny_pair, tiny_pair_dirs):
    save_router(tiny_pair, tmp_path / "r")
    odd = "[/x] [bold]hi[/] [/]"
    data = tmp_path / "odd.jsonl"
    write_jsonl(data, [Example(f"计算 12+7 {odd}", "19", id=odd, category=odd),
                       Example("您好", "您好", id="[/b]", category="[red]")])
    f, s = tiny_pair_dirs
    base = ["generate", "--foundation", f, "--sft", s, "--model", "btm", "--router_checkpoint", tmp_path / "r",
            "--max_new_tokens", "2"]
    rc, out, _ = cli(capsys, *base, "--eval_file", data, "--output_file", tmp_path / "o.jsonl", "--show_router_stats")
    assert rc == 0 and "[/x]" in out and "[red]" in out
    rc, out, _ = cli(capsys, *base, "--prompt", odd, "--show_router_stats")
    assert rc == 0 and "[/x]" in out


# --- data and config files -------------------------------------------------------------------------------------------
def test_jsonl_lines_end_at_newline_only(tmp_path):
    odd = "a\u2028b\u2029c\u0085d\x1ce\x0bf\x0cg"
    path = tmp_path / "odd.jsonl"
    write_jsonl(path, [Example(odd, odd, id="1"), Example("x", "y", id="2")])
    assert len(path.read_bytes().split(b"\n")) == 3  # json.dumps(ensure_ascii=False) wrote the characters raw
    assert [e.input for e in load_jsonl(path)] == [odd, "x"]
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # Windows line ends still read
    assert [e.id for e in load_jsonl(path)] == ["1", "2"]


def test_a_non_utf8_config_names_the_file(capsys, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("data:\n  prompt_format: raw  # café\n".encode("latin-1"))
    one_line_error(capsys, "check", "--config", cfg, contains=(str(cfg), "not UTF-8"))


def test_evaluate_with_an_unknown_model_is_an_error(capsys, tmp_path, tiny_pair_dirs):
    f, s = tiny_pair_dirs
    one_line_error(capsys, "evaluate", "--foundation", f, "--sft", s, "--models", "foundation", "foundaton",
                   "--output_dir", tmp_path / "run", "--log-file", tmp_path / "e.log",
                   contains=("unknown model 'foundaton'", "check the spelling"))
    assert not (tmp_path / "run").exists()
