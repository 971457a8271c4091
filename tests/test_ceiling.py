"""The ceiling of per-token routing: the exact interval test, the bound it claims, and ``sopmoe ceiling``."""

from __future__ import annotations

import json

import pytest
import torch

from harness.cli import main
from sopmoe_models.ceiling import ceiling_scores, counts, mixture_interval, mixture_reaches
from sopmoe_models.data import Example, load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.prompt import format_prompt
from sopmoe_models.scoring import score_examples

FAMILIES = ("sop_strict", "reasoning", "mixed")


def _random_case(n: int, v: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # peaked and flat rows alike, so that both experts are often right, wrong or close
    p_f = torch.softmax(torch.randn(n, v, generator=g) * 3, -1)
    p_s = torch.softmax(torch.randn(n, v, generator=g) * 3, -1)
    y = torch.randint(0, v, (n,), generator=g)
    return p_f, p_s, y


def test_mixture_reaches_is_exact_against_a_dense_gate_grid():
    p_f, p_s, y = _random_case(4000, 6, seed=0)
    got = mixture_reaches(p_f, p_s, y)
    grid = torch.linspace(0, 1, 2001)
    mix = grid[:, None, None] * p_f + (1 - grid[:, None, None]) * p_s  # (G, N, V)
    on_grid = (mix.argmax(-1) == y).any(0)
    assert bool((on_grid & ~got).sum() == 0), "a gate on the grid reaches y but the exact test says no"
    lower, upper, _ = mixture_interval(p_f, p_s, y)
    mid = (lower.clamp(min=0) + upper.clamp(max=1)) / 2  # inside the interval, inside [0, 1]
    at_mid = (mid[:, None] * p_f + (1 - mid[:, None]) * p_s).argmax(-1) == y
    assert bool(at_mid[got].all()), "the exact test says yes but the interval's midpoint does not reach y"
    assert 0.1 < got.float().mean() < 0.9 and bool((got & ~(p_f.argmax(-1) == y) & ~(p_s.argmax(-1) == y)).any())


def test_either_expert_is_within_the_mixture_ceiling():
    p_f, p_s, y = _random_case(2000, 5, seed=1)
    either = (p_f.argmax(-1) == y) | (p_s.argmax(-1) == y)
    assert bool(mixture_reaches(p_f, p_s, y)[either].all())


def _greedy_examples(pair, prompts, weight):
    """Examples whose output is the greedy continuation of the ensemble at ``weight``."""
    tok = pair.tokenizer
    model = EnsembleLM(pair, weight, 1.0 - weight, "prob")
    out = []
    for p in prompts:
        ids = torch.tensor([tok(format_prompt(p), add_special_tokens=False)["input_ids"]])
        text = model.generate(ids, max_new_tokens=6).texts[0]
        if text:
            out.append(Example(p, text, id=f"w{weight}-{len(out)}", category="mixed"))
    return out


def test_ceiling_bounds_every_fixed_mixture_and_matches_each_expert(tiny_pair, tiny_data_dir):
    prompts = [ex.input for f in FAMILIES for ex in load_jsonl(tiny_data_dir / "eval" / f"{f}.jsonl")]
    examples = [ex for f in FAMILIES for ex in load_jsonl(tiny_data_dir / "eval" / f"{f}.jsonl")]
    for w in (0.0, 0.5, 1.0):
        examples += _greedy_examples(tiny_pair, prompts, w)
    got = ceiling_scores(tiny_pair, examples, batch_size=3)
    tok = tiny_pair.tokenizer
    for w in (0.0, 0.35, 0.5, 1.0):
        greedy = [s.greedy for s in score_examples(EnsembleLM(tiny_pair, w, 1.0 - w, "prob").logprobs, tok, examples)]
        assert all(c.mixture for c, g in zip(got, greedy) if g), f"the ensemble at {w} solves one the ceiling misses"
        if w in (0.0, 1.0):
            assert [c.sft if w == 0.0 else c.foundation for c in got] == greedy
    assert all(c.either for c in got if c.foundation or c.sft)
    assert all(c.mixture for c in got if c.either)
    total = counts(got)
    assert total["n"] == len(examples) and total["mixture"] >= total["either"] > 0  # greedy references are reachable


def _bed(tmp_path, tiny_pair_dirs, tiny_data_dir, name="bed"):
    f, s = tiny_pair_dirs
    bed = tmp_path / name
    bed.mkdir()
    (bed / "config.yaml").write_text(
        f"models:\n  foundation:\n    path: {f}\n  sft:\n    path: {s}\n"
        f"data:\n  task_data_dir: {tiny_data_dir / 'eval'}\n  dev_dir: {tiny_data_dir / 'eval'}\n", encoding="utf-8")
    return bed


def _leaderboard(path):
    chart = {f: {"foundation": [0.2, 0.01], "sft": [0.1, 0.0], "token_level": [0.3, 0.1]} for f in FAMILIES}
    pareto = [{"name": "foundation", "fusion": False}, {"name": "sft", "fusion": False},
              {"name": "token_level", "fusion": True}]
    path.write_text(json.dumps({"format": "sopmoe-leaderboard/1", "chart": chart, "pareto": pareto}))
    return path


def test_ceiling_command_writes_markdown_json_and_readme_and_rerenders(tmp_path, tiny_pair, tiny_pair_dirs,
                                                                       tiny_data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    beds = [_bed(tmp_path, tiny_pair_dirs, tiny_data_dir, n) for n in ("seed0", "seed1")]
    lb = _leaderboard(tmp_path / "lb.json")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- sopmoe:ceiling:begin -->\nold\n<!-- sopmoe:ceiling:end -->\n\ntail\n")
    out, js = tmp_path / "r" / "CEILING.md", tmp_path / "r" / "ceiling.json"
    rc = main(["ceiling", *map(str, beds), "--compare", str(lb), "--out", str(out), "--json", str(js),
               "--readme", str(readme)])
    assert rc == 0
    data = json.loads(js.read_text())
    assert data["format"] == "sopmoe-ceiling/1" and data["split"] == "test" and len(data["beds"]) == 2
    for fam in FAMILIES:
        direct = counts(ceiling_scores(tiny_pair, load_jsonl(tiny_data_dir / "eval" / f"{fam}.jsonl")))
        assert data["beds"][0]["families"][fam] == direct == data["beds"][1]["families"][fam]
    md = out.read_text()
    assert md.startswith("<!-- generated by `sopmoe ceiling") and "| mixed |" in md and "token_level 0.300" in md
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- sopmoe:ceiling:end -->\n\ntail\n") and "| mixed |" in text
    assert "| mixed |" in capsys.readouterr().out
    # the committed JSON alone re-renders the same bytes; a file sopmoe did not write is never replaced unasked
    again = tmp_path / "again.md"
    assert main(["ceiling", "--from-json", str(js), "--out", str(again)]) == 0
    assert again.read_text() == md
    foreign = tmp_path / "mine.md"
    foreign.write_text("my notes\n")
    assert main(["ceiling", "--from-json", str(js), "--out", str(foreign)]) == 2
    assert foreign.read_text() == "my notes\n"


@pytest.mark.parametrize("argv, words", [
    (["--split", "dev", "--compare", "lb.json"], "--compare"),
    (["--from-json", "missing.json"], "--from-json missing.json"),
])
def test_ceiling_command_refuses_bad_input_in_one_line(tmp_path, tiny_pair_dirs, tiny_data_dir, monkeypatch, capsys,
                                                       argv, words):
    monkeypatch.chdir(tmp_path)
    _leaderboard(tmp_path / "lb.json")
    rc = main(["ceiling", *argv, "--out", str(tmp_path / "c.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0] and "Traceback" not in err[0]


def test_ceiling_command_reads_compare_before_measuring(tmp_path, tiny_pair_dirs, tiny_data_dir, monkeypatch, capsys):
    """A --compare file that is not a leaderboard JSON is refused before any bed is loaded or scored."""
    import harness.ceiling

    monkeypatch.chdir(tmp_path)
    bed = _bed(tmp_path, tiny_pair_dirs, tiny_data_dir)
    monkeypatch.setattr(harness.ceiling, "measure", lambda *a, **k: pytest.fail("measured before reading --compare"))
    (tmp_path / "lb.json").write_text("{}")
    rc = main(["ceiling", str(bed), "--compare", str(tmp_path / "lb.json"), "--out", str(tmp_path / "c.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--compare" in err[0] and not (tmp_path / "c.md").exists()
