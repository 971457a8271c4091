"""``sopmoe regress``: compare an evaluation run against a committed baseline, metric by metric, in each
metric's better direction.

Baseline file (``results/baseline.json``, written by ``--update``)::

    {"format": "sopmoe-baseline/1",
     "made_by": "<the command that wrote it>", "runs": ["results/runs/demo"], "lm_eval_version": "0.4.13",
     "tolerance": {"acc": {"abs": 0.05}, "perplexity": {"rel": 0.1}, ...},
     "higher_is_better": {"acc": true, "perplexity": false, ...},
     "metrics": {"<model>": {"<task>": {"<metric>": value}}}}

Tolerances: perplexity-like metrics (name contains ``perplexity``; unbounded, scale set by the tokenizer) are
*relative*: a regression is current > baseline·(1 + tol). Every other metric (rates in [0, 1]: acc, exact_match,
format_ok) is *absolute*: current < baseline − tol when higher is better (current > baseline + tol otherwise).
Defaults: 0.05 absolute, 0.10 relative; ``--tolerance acc=0.02,perplexity=0.05,*=0.03`` overrides per metric (``*``:
the rest); the precedence is command line, then the baseline file, then the defaults. Several current runs are
averaged per cell first. A baseline cell missing from the current run is a regression unless ``allow_missing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.runs import HIGHER_IS_BETTER, collect, model_order, read_json, read_runs, write_json

BASELINE_FORMAT = "sopmoe-baseline/1"
DEFAULT_ABS, DEFAULT_REL = 0.05, 0.10


def tolerance_kind(metric: str) -> str:
    return "rel" if "perplexity" in metric else "abs"


def default_tolerances() -> dict[str, dict[str, float]]:
    return {"acc": {"abs": DEFAULT_ABS}, "exact_match": {"abs": DEFAULT_ABS}, "format_ok": {"abs": DEFAULT_ABS},
            "perplexity": {"rel": DEFAULT_REL}}


def parse_tolerance(text: str | None) -> dict[str, dict[str, float]]:
    """``"acc=0.05,perplexity=0.10,*=0.02"`` -> ``{"acc": {"abs": 0.05}, "perplexity": {"rel": 0.1}, ...}``."""
    out: dict[str, dict[str, float]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        metric, sep, value = part.partition("=")
        metric = metric.strip()
        try:
            tol = float(value)
        except ValueError:
            tol = -1.0
        if not sep or not metric or tol < 0:
            raise ValueError(f"--tolerance {text!r}: expected METRIC=NUMBER[,METRIC=NUMBER...] with NUMBER >= 0 "
                             f"(e.g. acc=0.05,perplexity=0.10), got {part!r}")
        out[metric] = {tolerance_kind(metric): tol}
    return out


@dataclass(frozen=True)
class Finding:
    model: str
    task: str
    metric: str
    baseline: float | None
    current: float | None
    limit: float | None  # the worst acceptable current value
    status: str  # ok | regressed | improved | missing | new

    def line(self) -> str:
        where = f"{self.model}/{self.task}/{self.metric}"
        if self.status == "missing":
            return f"MISSING: {where}: in the baseline ({self.baseline:.4f}) but not in the current run"
        if self.status == "new":
            return f"NEW: {where}: {self.current:.4f} (not in the baseline)"
        delta = self.current - self.baseline
        word = {"regressed": "REGRESSION", "improved": "IMPROVED", "ok": "ok"}[self.status]
        return (f"{word}: {where}: baseline {self.baseline:.4f} -> current {self.current:.4f} "
                f"({delta:+.4f}; limit {self.limit:.4f})")


def _tolerance_for(metric: str, tolerances: dict[str, dict[str, float]]) -> tuple[str, float]:
    spec = tolerances.get(metric) or tolerances.get(metric.split(",")[0])
    if spec:
        kind, tol = next(iter(spec.items()))
        return kind, float(tol)
    kind = tolerance_kind(metric)
    star = tolerances.get("*")
    if star:
        return kind, float(next(iter(star.values())))
    return kind, DEFAULT_REL if kind == "rel" else DEFAULT_ABS


def limit_for(base: float, metric: str, higher: bool, tolerances) -> float:
    kind, tol = _tolerance_for(metric, tolerances)
    margin = abs(base) * tol if kind == "rel" else tol
    return base - margin if higher else base + margin


def current_metrics(run_dirs: list[str | Path]) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, bool], list]:
    """Mean per (model, task, metric) over the runs, each metric's direction, and the runs read."""
    runs = read_runs(run_dirs)
    cells = collect(runs)
    hib: dict[str, bool] = {}
    for run in runs:
        for mr in run.models.values():
            for task, metrics in mr.metrics.items():
                for metric in metrics:
                    hib.setdefault(metric, mr.higher_is_better(task, metric))
    out = {name: {task: {metric: sum(m.value for m in ms) / len(ms) for metric, ms in sorted(cells[name][task].items())}
                  for task in sorted(cells[name])} for name in model_order(runs)}
    return out, hib, runs


def compare(baseline: dict[str, Any], current: dict, hib: dict[str, bool],
            tolerances: dict[str, dict[str, float]] | None = None) -> list[Finding]:
    """Every baseline (model, task, metric) against the current run, then the current cells the baseline lacks."""
    tol = {**default_tolerances(), **baseline.get("tolerance", {}), **(tolerances or {})}
    directions = {**HIGHER_IS_BETTER, **baseline.get("higher_is_better", {}), **hib}
    findings = []
    for model, tasks in baseline.get("metrics", {}).items():
        for task, metrics in tasks.items():
            for metric, base in metrics.items():
                cur = current.get(model, {}).get(task, {}).get(metric)
                higher = directions.get(metric.split(",")[0], True)
                limit = limit_for(base, metric, higher, tol)
                if cur is None:
                    findings.append(Finding(model, task, metric, base, None, limit, "missing"))
                    continue
                worse = cur < limit if higher else cur > limit
                better = cur > 2 * base - limit if higher else cur < 2 * base - limit
                status = "regressed" if worse else "improved" if better else "ok"
                findings.append(Finding(model, task, metric, base, cur, limit, status))
    for model, tasks in current.items():
        for task, metrics in tasks.items():
            for metric, cur in metrics.items():
                if metric not in baseline.get("metrics", {}).get(model, {}).get(task, {}):
                    findings.append(Finding(model, task, metric, None, cur, None, "new"))
    return findings


def make_baseline(run_dirs: list[str | Path], tolerances: dict[str, dict[str, float]] | None = None,
                  made_by: str | None = None) -> dict[str, Any]:
    current, hib, runs = current_metrics(run_dirs)
    versions = sorted({mr.results.get("lm_eval_version", "?") for r in runs for mr in r.models.values()})
    tol = {**default_tolerances(), **(tolerances or {})}
    return {
        "format": BASELINE_FORMAT,
        "made_by": made_by or "sopmoe regress --update --current " + " ".join(map(str, run_dirs)),
        "runs": [str(p) for p in run_dirs],
        "lm_eval_version": ", ".join(versions),
        "tolerance": {k: tol[k] for k in sorted(tol)},
        "higher_is_better": {k: hib[k] for k in sorted(hib)},
        "metrics": current,
    }


def read_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: baseline not found (write one with `sopmoe regress --baseline {path} "
                                f"--current RUN_DIR --update`)")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: not a sopmoe baseline (expected \"format\": \"{BASELINE_FORMAT}\" and \"metrics\")")
    return data


@dataclass
class RegressResult:
    findings: list[Finding]
    failed: list[Finding]
    updated: bool

    @property
    def ok(self) -> bool:
        return not self.failed


def regress(baseline_path: str | Path, run_dirs: list[str | Path], *, tolerance: str | None = None,
            update: bool = False, allow_missing: bool = False, command: str | None = None) -> RegressResult:
    """Compare (when a baseline exists) and, with ``update``, rewrite the baseline atomically from the runs."""
    tolerances = parse_tolerance(tolerance)
    path = Path(baseline_path)
    findings: list[Finding] = []
    previous: dict[str, Any] = {}
    if path.is_file() or not update:
        previous = read_baseline(path)
        current, hib, _ = current_metrics(run_dirs)
        findings = compare(previous, current, hib, tolerances)
    bad = {"regressed"} | (set() if allow_missing else {"missing"})
    failed = [f for f in findings if f.status in bad]
    if update:
        keep = {**previous.get("tolerance", {}), **tolerances}
        write_json(path, make_baseline(run_dirs, keep, command))
        failed = []
    return RegressResult(findings, failed, update)
