"""Issue 11 §6 and issue 13 class 5, in ``sopmoe regress``: two-sided (an improvement beyond tolerance fails unless
allowed), an absolute tolerance on the per-token loss (ln perplexity, nats), and NaN/infinite or malformed
tolerances, baseline values and current values refused in one line (exit 2). Format 1 baselines are read compatibly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from harness.regress import DEFAULT_NATS, read_baseline
from tests.reliability import cli, one_line_error

DATA = Path(__file__).parent / "data" / "leaderboard"


@pytest.fixture
def runs(tmp_path):
    shutil.copytree(DATA / "seed0", tmp_path / "seed0")
    return tmp_path


def _set(run: Path, model: str, task: str, metric: str, value) -> None:
    path = run / model / "results.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    d["results"][task][f"{metric},none"] = value
    path.write_text(json.dumps(d), encoding="utf-8")


def _regress(capsys, runs: Path, *extra):
    return cli(capsys, "regress", "--baseline", runs / "baseline.json", "--current", runs / "seed0", *extra)


def _edit_baseline(runs: Path, fn) -> None:
    path = runs / "baseline.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data), encoding="utf-8")  # json.dumps writes NaN/Infinity tokens, as a bad tool would


def test_an_improvement_beyond_tolerance_fails_unless_allowed(capsys, runs):
    assert _regress(capsys, runs, "--update")[0] == 0
    _set(runs / "seed0", "sft", "sop_strict", "acc", 0.99)  # +0.14 > 0.05: too good to be silently true
    rc, out, _ = _regress(capsys, runs)
    assert rc == 1
    assert "IMPROVED BEYOND TOLERANCE: sft/sop_strict/acc: baseline 0.8500 -> current 0.9900" in out
    assert "--allow-improvement" in out and "1 improvement(s) beyond tolerance" in out
    rc, out, _ = _regress(capsys, runs, "--allow-improvement")
    assert rc == 0 and "1 improvement(s) beyond tolerance allowed" in out
    _edit_baseline(runs, lambda d: d.update(allow_improvement=True))  # or allowed by the baseline file
    assert _regress(capsys, runs)[0] == 0
    assert _regress(capsys, runs, "--update")[0] == 0  # --update keeps the file's setting
    assert json.loads((runs / "baseline.json").read_text())["allow_improvement"] is True


def test_per_token_loss_has_an_absolute_tolerance_in_nats(capsys, runs):
    _set(runs / "seed0", "sft", "sop_strict", "perplexity", 1.0007)  # per-token NLL 0.0007 nats
    assert _regress(capsys, runs, "--update")[0] == 0
    # perplexity 1.0007 -> 1.1: within the old "10% relative" rule, but per-token loss grew 136-fold (+0.095 nats)
    _set(runs / "seed0", "sft", "sop_strict", "perplexity", 1.1)
    assert 1.1 < 1.0007 * 1.1 and math.log(1.1) / math.log(1.0007) > 100
    rc, out, _ = _regress(capsys, runs)
    assert rc == 1 and "REGRESSION: sft/sop_strict/perplexity" in out and "+0.0946 nats/token" in out
    _set(runs / "seed0", "sft", "sop_strict", "perplexity", 1.0007 * math.exp(DEFAULT_NATS * 0.9))  # within 0.05
    assert _regress(capsys, runs)[0] == 0
    _set(runs / "seed0", "sft", "sop_strict", "perplexity", 1.0007 * math.exp(0.03))
    assert _regress(capsys, runs, "--tolerance", "perplexity=0.02")[0] == 1  # the flag is in nats too


@pytest.mark.parametrize("tol", ["acc=nan", "acc=inf", "acc=-inf", "perplexity=NaN", "*=inf", "acc=-0.1", "acc=x"])
def test_nan_or_infinite_tolerances_are_refused(capsys, runs, tol):
    assert _regress(capsys, runs, "--update")[0] == 0
    one_line_error(capsys, "regress", "--baseline", runs / "baseline.json", "--current", runs / "seed0",
                   "--tolerance", tol, contains=("--tolerance", "finite"))


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["metrics"]["sft"]["sop_strict"].update(acc=float("nan")), "metrics.sft.sop_strict.acc = nan"),
    (lambda d: d["metrics"]["sft"]["sop_strict"].update(acc=float("inf")), "metrics.sft.sop_strict.acc = inf"),
    (lambda d: d["metrics"]["sft"]["sop_strict"].update(acc="0.85"), "metrics.sft.sop_strict.acc = '0.85'"),
    (lambda d: d["metrics"]["sft"]["sop_strict"].update(acc=None), "metrics.sft.sop_strict.acc = None"),
    (lambda d: d["metrics"]["sft"]["sop_strict"].update(acc=True), "metrics.sft.sop_strict.acc = True"),
    (lambda d: d["metrics"]["sft"]["sop_strict"].update(perplexity=0), "a perplexity must be > 0"),
    (lambda d: d["metrics"]["sft"].update(sop_strict=[0.85]), "metrics.sft.sop_strict is not an object"),
    (lambda d: d["metrics"].update(sft=3), "metrics.sft is not an object"),
    (lambda d: d["tolerance"].update(acc={"abs": float("nan")}), "tolerance.acc.abs = nan"),
    (lambda d: d["tolerance"].update(acc=0.05), "tolerance.acc = 0.05"),
    (lambda d: d["tolerance"].update(acc={"nats": 0.05}), "a 'nats' tolerance does not fit acc"),
    (lambda d: d.update(tolerance=[1]), "tolerance is not an object"),
    (lambda d: d.update(higher_is_better={"acc": "yes"}), "higher_is_better must map"),
    (lambda d: d.update(allow_improvement="no"), "allow_improvement = 'no'"),
    (lambda d: d.update(format="sopmoe-baseline/9"), "not a sopmoe baseline"),
])
def test_malformed_or_non_finite_baselines_are_one_line(capsys, runs, edit, where):
    assert _regress(capsys, runs, "--update")[0] == 0
    _edit_baseline(runs, edit)
    one_line_error(capsys, "regress", "--baseline", runs / "baseline.json", "--current", runs / "seed0",
                   contains=(str(runs / "baseline.json"), where))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_current_values_are_refused(capsys, runs, value):
    assert _regress(capsys, runs, "--update")[0] == 0
    _set(runs / "seed0", "sft", "sop_strict", "acc", value)
    one_line_error(capsys, "regress", "--baseline", runs / "baseline.json", "--current", runs / "seed0",
                   contains=("sft/results.json: sop_strict acc,none", "not a finite number"))


def test_a_format_1_baseline_is_read_compatibly(capsys, runs):
    assert _regress(capsys, runs, "--update")[0] == 0

    def to_v1(d):
        d["format"] = "sopmoe-baseline/1"
        d["tolerance"]["perplexity"] = {"rel": 0.1}
        del d["allow_improvement"]

    _edit_baseline(runs, to_v1)
    base = read_baseline(runs / "baseline.json")
    assert "perplexity" not in base["tolerance"] and base["allow_improvement"] is False
    assert base["notes"] and "format 1" in base["notes"][0]
    rc, out, _ = _regress(capsys, runs)
    assert rc == 0 and out.startswith("note: ") and "0.05 nats/token" in out
    assert _regress(capsys, runs, "--update")[0] == 0
    rewritten = json.loads((runs / "baseline.json").read_text())
    assert rewritten["format"] == "sopmoe-baseline/2" and rewritten["tolerance"]["perplexity"] == {"nats": 0.05}
