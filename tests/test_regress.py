"""``sopmoe regress``: exit 0/1 on crafted runs, each regression named, tolerances by direction, ``--update``.
The guards (two-sided, nats, NaN, malformed and format 1 baselines) are in tests/test_reliability_regress.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.regress import compare, make_baseline, parse_tolerance

DATA = Path(__file__).parent / "data" / "leaderboard"


@pytest.fixture
def runs(tmp_path):
    for name in ("seed0", "seed1"):
        shutil.copytree(DATA / name, tmp_path / name)
    return tmp_path


def _set(run: Path, model: str, task: str, metric: str, value: float) -> None:
    path = run / model / "results.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    d["results"][task][f"{metric},none"] = value
    path.write_text(json.dumps(d), encoding="utf-8")


def _regress(runs: Path, *extra: str) -> int:
    return main(["regress", "--baseline", str(runs / "baseline.json"), "--current", str(runs / "seed0"), *extra])


def test_update_then_same_run_passes(runs, capsys):
    assert _regress(runs, "--update") == 0
    base = json.loads((runs / "baseline.json").read_text(encoding="utf-8"))
    assert base["format"] == "sopmoe-baseline/2" and "--update" in base["made_by"]
    assert base["metrics"]["sft"]["sop_strict"]["acc"] == 0.85
    assert base["tolerance"]["perplexity"] == {"nats": 0.05} and base["tolerance"]["acc"] == {"abs": 0.05}
    assert base["allow_improvement"] is False
    assert base["higher_is_better"] == {"acc": True, "exact_match": True, "format_ok": True, "perplexity": False}
    capsys.readouterr()
    assert _regress(runs) == 0
    assert capsys.readouterr().out.startswith("ok:")


def test_accuracy_drop_beyond_tolerance_fails_and_is_named(runs, capsys):
    _regress(runs, "--update")
    _set(runs / "seed0", "sft", "sop_strict", "acc", 0.70)  # -0.15 < -0.05
    _set(runs / "seed0", "foundation", "reasoning", "acc", 0.77)  # -0.03: within tolerance
    capsys.readouterr()
    assert _regress(runs) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: sft/sop_strict/acc: baseline 0.8500 -> current 0.7000" in out
    assert "foundation/reasoning/acc" not in out
    assert "FAILED: 1 regression(s) beyond tolerance, 0 improvement(s) beyond tolerance" in out and "0 missing" in out
    assert _regress(runs, "--tolerance", "acc=0.2") == 0  # a looser absolute tolerance lets it pass


def test_perplexity_is_compared_in_nats_and_lower_is_better(runs, capsys):
    _regress(runs, "--update")
    _set(runs / "seed0", "ensemble", "mixed", "perplexity", 1.7433 * 1.05)  # ln 1.05 = 0.049 < 0.05 nats: ok
    assert _regress(runs) == 0
    _set(runs / "seed0", "ensemble", "mixed", "perplexity", 1.7433 * 1.15)  # +0.14 nats/token: regression
    capsys.readouterr()
    assert _regress(runs) == 1
    assert "REGRESSION: ensemble/mixed/perplexity" in capsys.readouterr().out
    _set(runs / "seed0", "ensemble", "mixed", "perplexity", 1.2)  # much lower: reported, and a failure unless allowed
    capsys.readouterr()
    assert _regress(runs) == 1
    assert "IMPROVED BEYOND TOLERANCE: ensemble/mixed/perplexity" in capsys.readouterr().out
    assert _regress(runs, "--allow-improvement") == 0


def test_missing_model_is_a_regression_unless_allowed(runs, capsys):
    _regress(runs, "--update")
    summary = json.loads((runs / "seed0" / "summary.json").read_text(encoding="utf-8"))
    for m in summary["models"]:
        if m["name"] == "ensemble":
            m.update(status="skipped", reason="adapter not importable")
    (runs / "seed0" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    capsys.readouterr()
    assert _regress(runs) == 1
    out = capsys.readouterr().out
    assert "MISSING: ensemble/sop_strict/acc" in out
    assert _regress(runs, "--allow-missing") == 0


def test_update_rewrites_baseline_atomically_and_keeps_tolerances(runs):
    _regress(runs, "--update", "--tolerance", "acc=0.02")
    _set(runs / "seed0", "sft", "sop_strict", "acc", 0.82)  # -0.03 > the stored 0.02 tolerance
    assert _regress(runs) == 1
    assert _regress(runs, "--update") == 0
    base = json.loads((runs / "baseline.json").read_text(encoding="utf-8"))
    assert base["metrics"]["sft"]["sop_strict"]["acc"] == 0.82 and base["tolerance"]["acc"] == {"abs": 0.02}
    assert _regress(runs) == 0
    assert [p.name for p in runs.iterdir() if p.name.endswith(".tmp")] == []


def test_several_runs_are_compared_by_their_mean(runs):
    base = make_baseline([runs / "seed0"])
    current = make_baseline([runs / "seed0", runs / "seed1"])["metrics"]
    assert current["foundation"]["sop_strict"]["acc"] == pytest.approx(0.375)
    findings = compare(base, current, {})
    assert {f.status for f in findings} <= {"ok", "improved", "regressed"}
    assert not [f for f in findings if f.status == "regressed" and f.metric == "perplexity"]  # +0.015 < 0.05 nats


def test_bad_inputs_are_one_line_errors(runs, capsys):
    assert _regress(runs) == 2  # no baseline yet
    assert "baseline not found" in capsys.readouterr().err
    (runs / "baseline.json").write_text("{}", encoding="utf-8")
    assert _regress(runs) == 2
    assert "not a sopmoe baseline" in capsys.readouterr().err
    with pytest.raises(ValueError, match="METRIC=NUMBER"):
        parse_tolerance("acc")
    assert parse_tolerance("acc=0.1,perplexity=0.2,*=0.03") == {
        "acc": {"abs": 0.1}, "perplexity": {"nats": 0.2}, "*": {"abs": 0.03}}
