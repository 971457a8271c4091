"""``sopmoe sweep`` on the tiny pair: every point scored through lm-eval equals direct teacher-forced scoring."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.commands.sweep import parse_weights
from sopmoe_models.data import load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.scoring import accuracy, score_examples, token_perplexity


def test_sweep_writes_table_json_png_and_matches_direct_scoring(tiny_pair, tiny_pair_dirs, tiny_data_dir, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f, s = map(str, tiny_pair_dirs)
    out = tmp_path / "sweep"
    rc = main(["sweep", "--foundation", f, "--sft", s, "--weights", "1,0,0.5", "--mix", "both",
               "--tasks", "reasoning,sop_strict", "--data_dir", str(tiny_data_dir / "eval"), "--output_dir", str(out),
               "--batch_size", "2"])
    assert rc == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["weights"] == [0.0, 0.5, 1.0] and record["mixes"] == ["prob", "logit"]
    points = record["points"]
    assert [(p["mix"], p["foundation_weight"]) for p in points] == [
        ("prob", 0.0), ("prob", 0.5), ("prob", 1.0), ("logit", 0.0), ("logit", 0.5), ("logit", 1.0)]
    assert [p.get("reused", False) for p in points] == [False, False, False, True, False, True]
    for p in points:
        model = EnsembleLM(tiny_pair, p["foundation_weight"], p["sft_weight"], p["mix"])
        for task in ("reasoning", "sop_strict"):
            examples = load_jsonl(tiny_data_dir / "eval" / f"{task}.jsonl")
            direct = score_examples(model.logprobs, tiny_pair.tokenizer, examples)
            got = p["results"][task]
            assert got["n"] == len(examples)
            assert got["perplexity"] == pytest.approx(token_perplexity(direct), rel=1e-5), (p, task)
            assert got["acc"] == accuracy(direct)
    # the two mixes differ in between the experts, and agree at the ends
    assert points[1]["results"]["reasoning"]["perplexity"] != points[4]["results"]["reasoning"]["perplexity"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "foundation_weight" in (out / "config.yaml").read_text()
    printed = capsys.readouterr().out
    assert "ensemble accuracy" in printed and "reasoning" in printed
    # without the expert log-prob cache every point is scored from scratch: same numbers
    rc = main(["sweep", "--foundation", f, "--sft", s, "--weights", "0.5", "--mix", "logit", "--cache_gb", "0",
               "--tasks", "reasoning,sop_strict", "--data_dir", str(tiny_data_dir / "eval"),
               "--output_dir", str(tmp_path / "nocache"), "--batch_size", "2"])
    assert rc == 0
    (uncached,) = json.loads((tmp_path / "nocache" / "sweep.json").read_text())["points"]
    for task in ("reasoning", "sop_strict"):
        assert uncached["results"][task]["perplexity"] == pytest.approx(points[4]["results"][task]["perplexity"],
                                                                         rel=1e-6)


@pytest.mark.parametrize("text", ["0,2", "-0.1", "a,b", "", "nan"])
def test_bad_weights_are_refused(text):
    with pytest.raises(ValueError, match="--weights"):
        parse_weights(text)


def test_generation_tasks_are_refused(tiny_pair_dirs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f, s = map(str, tiny_pair_dirs)
    assert main(["sweep", "--foundation", f, "--sft", s, "--tasks", "sop_strict_gen"]) == 2
    assert "loglikelihood tasks" in capsys.readouterr().err
