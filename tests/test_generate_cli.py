"""``sopmoe generate`` on the tiny pair, in-process through ``harness.cli.main``: prompt mode and eval-file mode."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from sopmoe_models.data import Example, load_jsonl, write_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.prompt import format_prompt


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/config.yaml; logs/ and results/ land here


def _answer(pair, w_f, w_s, text, n, mix="prob"):
    tok = pair.tokenizer
    ids = tok(format_prompt(text), return_tensors="pt", add_special_tokens=False)["input_ids"]
    return EnsembleLM(pair, w_f, w_s, mix).generate(ids, max_new_tokens=n).texts[0]


def test_prompt_mode_prints_the_answer(tiny_pair, tiny_pair_dirs, capsys):
    f, s = map(str, tiny_pair_dirs)
    rc = main(["generate", "--foundation", f, "--sft", s, "--model", "ensemble", "--prompt", "计算 12+7 等于多少",
               "--foundation_weight", "0.7", "--sft_weight", "0.3", "--mix", "logit", "--max_new_tokens", "12"])
    assert rc == 0
    expected = _answer(tiny_pair, 0.7, 0.3, "计算 12+7 等于多少", 12, "logit")
    assert expected and capsys.readouterr().out == expected + "\n"
    rc = main(["generate", "--foundation", f, "--sft", s, "--model", "sft", "--prompt", "您好", "--max_new_tokens", "5"])
    assert rc == 0 and capsys.readouterr().out == _answer(tiny_pair, 0, 1, "您好", 5) + "\n"


def test_eval_file_mode_writes_every_model_and_who_wins(tiny_pair, tiny_pair_dirs, tiny_data_dir, tmp_path, capsys):
    f, s = map(str, tiny_pair_dirs)
    examples = load_jsonl(tiny_data_dir / "eval" / "eval_all.jsonl")
    n = 8
    # references chosen so foundation is right on example 0, sft on example 1, neither on the rest
    refs = [_answer(tiny_pair, 1, 0, examples[0].input, n), _answer(tiny_pair, 0, 1, examples[1].input, n)]
    assert refs[0].strip() and refs[1].strip() and refs[0] != refs[1]
    rigged = [Example(examples[0].input, refs[0], "a", "sop_strict"), Example(examples[1].input, refs[1], "b", "reasoning")]
    rigged += [Example(ex.input, ex.output, f"x{i}", "reasoning") for i, ex in enumerate(examples[2:5])]
    data = tmp_path / "rigged.jsonl"
    write_jsonl(data, rigged)
    out = tmp_path / "out" / "gen.jsonl"
    rc = main(["generate", "--foundation", f, "--sft", s, "--eval_file", str(data), "--output_file", str(out),
               "--max_new_tokens", str(n), "--batch_size", "2", "--foundation_weight", "0.6", "--sft_weight", "0.4"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "x0", "x1", "x2"]  # input order, whatever the batching
    for r, ex in zip(rows, rigged):
        assert r["input"] == ex.input and r["reference"] == ex.output and r["model"] == "ensemble"
        assert set(r["outputs"]) == {"ensemble", "foundation", "sft"} and r["output"] == r["outputs"]["ensemble"]
        # batched, left-padded answers equal one-by-one generation
        assert r["outputs"]["foundation"] == _answer(tiny_pair, 1, 0, ex.input, n)
        assert r["outputs"]["ensemble"] == _answer(tiny_pair, 0.6, 0.4, ex.input, n)
    assert rows[0]["exact_match"]["foundation"] == 1 and rows[0]["exact_match"]["sft"] == 0
    assert rows[1]["exact_match"]["sft"] == 1 and rows[1]["exact_match"]["foundation"] == 0
    summary = json.loads((out.parent / "gen.summary.json").read_text())["summary"]
    by_cat = {e["category"]: e for e in summary}
    assert by_cat["sop_strict"]["foundation_only"] == 1 and by_cat["sop_strict"]["best"] == "foundation"
    assert by_cat["reasoning"]["sft_only"] == 1 and by_cat["reasoning"]["neither"] == 3
    assert by_cat["all"]["n"] == 5 and by_cat["all"]["exact_match"]["foundation"] == pytest.approx(0.2)
    assert (out.parent / "gen.config.yaml").read_text().count("foundation_weight: 0.6") == 1
    printed = capsys.readouterr().out
    assert "where each expert wins" in printed and "sop_strict" in printed


@pytest.mark.parametrize(
    "extra, message",
    [([], "give --prompt TEXT or --eval_file FILE"),
     (["--prompt", "x", "--foundation_weight", "-1"], "ensemble.foundation_weight"),
     (["--prompt", "x", "--foundation_weight", "0", "--sft_weight", "0"], "both 0"),
     (["--eval_file", "missing.jsonl"], "missing.jsonl: no such data file"),
     (["--prompt", "  "], "--prompt is empty")],
)
def test_bad_input_is_a_one_line_error(tiny_pair_dirs, capsys, extra, message):
    f, s = map(str, tiny_pair_dirs)
    assert main(["generate", "--foundation", f, "--sft", s, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_prompt_and_eval_file_are_exclusive(tiny_pair_dirs):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "x", "--eval_file", "y.jsonl"])
    assert e.value.code == 2
