"""``sopmoe regress``: compare an evaluation run against a committed baseline, metric by metric, on both sides.

Baseline file (``results/baseline.json``, written by ``--update``)::

    {"format": "sopmoe-baseline/2",
     "made_by": "<the command that wrote it>", "runs": ["results/runs/demo"], "lm_eval_version": "0.4.13",
     "tolerance": {"acc": {"abs": 0.05}, "perplexity": {"nats": 0.05}, ...},
     "allow_improvement": false,
     "higher_is_better": {"acc": true, "perplexity": false, ...},
     "metrics": {"<model>": {"<task>": {"<metric>": value}}}}

Two-sided: a cell fails when it moves beyond its tolerance in *either* direction. A move the wrong way is a
REGRESSION; a move the good way beyond tolerance is IMPROVED and fails too unless allowed (``--allow-improvement``
or ``"allow_improvement": true`` in the baseline), because a jump that large is as likely a leak or a changed task as
a real gain; a real one is recorded with ``--update``.

Tolerances, per metric:

- rates in [0, 1] (``acc``, ``exact_match``, ``format_ok``): ``abs``, an absolute difference (default 0.05);
- perplexity-like metrics (name contains ``perplexity``): ``nats``, an absolute difference of ln(perplexity), i.e.
  of the mean per-token negative log-likelihood in nats (default 0.05). The per-token loss is what the model
  optimises and what adds up over an answer (a change δ per token moves an L-token answer's log-likelihood by L·δ),
  so its tolerance is absolute; 0.05 nats/token is a 5.1% change of perplexity at any level (e^0.05 = 1.051), half of
  what the old rule "perplexity within 10%" allowed (ln 1.1 = 0.095 nats), and about the gap between the test bed's
  fused models (0.01–0.1 nats) rather than between its experts (~1 nat), while a fixed-seed rerun moves it by 0.

``--tolerance acc=0.02,perplexity=0.03,*=0.03`` overrides per metric (``*``: the rest, in each metric's kind); the
precedence is command line, then the baseline file, then the defaults. Several current runs are averaged per cell
first. A baseline cell missing from the current run fails unless ``allow_missing``.

Numbers are checked on the way in: a NaN or infinite tolerance, baseline value or current value, or a perplexity
that is not positive, is a :class:`UserError` naming the file (or flag) and the cell. Format 1 baselines are read
compatibly: their relative perplexity tolerance (``{"rel": 0.1}``) is replaced by the format 2 default in nats (a note
says so), everything else keeps its meaning; ``--update`` writes format 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.runs import HIGHER_IS_BETTER, RESULTS, read_json, read_runs, table, write_json
from sopmoe_models.errors import UserError, is_number

BASELINE_FORMAT = "sopmoe-baseline/2"
LEGACY_FORMAT = "sopmoe-baseline/1"
DEFAULT_ABS, DEFAULT_NATS = 0.05, 0.05
KINDS = ("abs", "nats")


def tolerance_kind(metric: str) -> str:
    return "nats" if "perplexity" in metric else "abs"


def default_tolerances() -> dict[str, dict[str, float]]:
    return {"acc": {"abs": DEFAULT_ABS}, "exact_match": {"abs": DEFAULT_ABS}, "format_ok": {"abs": DEFAULT_ABS},
            "perplexity": {"nats": DEFAULT_NATS}}


def parse_tolerance(text: str | None) -> dict[str, dict[str, float]]:
    """``"acc=0.05,perplexity=0.05,*=0.02"`` -> ``{"acc": {"abs": 0.05}, "perplexity": {"nats": 0.05}, ...}``."""
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
        if not sep or not metric or not math.isfinite(tol) or tol < 0:
            raise UserError(f"--tolerance {text!r}: expected METRIC=NUMBER[,METRIC=NUMBER...] with a finite NUMBER "
                            f">= 0 (e.g. acc=0.05,perplexity=0.05; perplexity in nats/token), got {part!r}")
        out[metric] = {tolerance_kind(metric): tol}
    return out


@dataclass(frozen=True)
class Finding:
    model: str
    task: str
    metric: str
    baseline: float | None
    current: float | None
    low: float | None  # the allowed range of the current value, in the metric's own units
    high: float | None
    status: str  # ok | regressed | improved | missing | new
    kind: str = "abs"

    @property
    def limit(self) -> float | None:
        """The worst acceptable current value (kept for callers of format 1)."""
        return None if self.low is None else (self.low if self.high_is_better else self.high)

    high_is_better: bool = True

    def delta(self) -> str:
        if self.kind == "nats":
            return f"{math.log(self.current) - math.log(self.baseline):+.4f} nats/token"
        return f"{self.current - self.baseline:+.4f}"

    def line(self) -> str:
        where = f"{self.model}/{self.task}/{self.metric}"
        if self.status == "missing":
            return f"MISSING: {where}: in the baseline ({self.baseline:.4f}) but not in the current run"
        if self.status == "new":
            return f"NEW: {where}: {self.current:.4f} (not in the baseline)"
        word = {"regressed": "REGRESSION", "improved": "IMPROVED BEYOND TOLERANCE", "ok": "ok"}[self.status]
        text = (f"{word}: {where}: baseline {self.baseline:.4f} -> current {self.current:.4f} ({self.delta()}; "
                f"allowed {self.low:.4f}..{self.high:.4f})")
        if self.status == "improved":
            text += ("; a move this large in the good direction fails too (a leak or a changed task looks like "
                     "this); if it is real, record it with --update or accept it with --allow-improvement")
        return text


def _tolerance_for(metric: str, tolerances: dict[str, dict[str, float]]) -> tuple[str, float]:
    spec = tolerances.get(metric) or tolerances.get(metric.split(",")[0])
    kind = tolerance_kind(metric)
    if spec:
        return kind, float(next(iter(spec.values())))
    star = tolerances.get("*")
    if star:
        return kind, float(next(iter(star.values())))
    return kind, DEFAULT_NATS if kind == "nats" else DEFAULT_ABS


def allowed_range(base: float, metric: str, tolerances) -> tuple[str, float, float]:
    """(kind, low, high): the current values within tolerance of ``base``."""
    kind, tol = _tolerance_for(metric, tolerances)
    if kind == "nats":
        return kind, base * math.exp(-tol), base * math.exp(tol)
    return kind, base - tol, base + tol


def current_metrics(run_dirs: list[str | Path]) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, bool], list]:
    """Mean per (model, task, metric) over the runs, each metric's direction, and the runs read (every metric value
    checked finite first: lm-eval writes NaN where a metric could not be computed)."""
    runs = read_runs(run_dirs)
    for run in runs:
        for name, mr in run.models.items():
            for task, row in (mr.results.get("results") or {}).items():
                for key, value in (row or {}).items():
                    if "," not in key or "_stderr," in key or not is_number(value):
                        continue
                    where = f"{run.path / name / 'results.json'}: {task} {key}"
                    if not math.isfinite(value):
                        raise UserError(f"{where} = {value}: not a finite number, so it cannot be compared; re-run "
                                        "the evaluation (or drop that model from the run)")
                    if tolerance_kind(key) == "nats" and value <= 0:
                        raise UserError(f"{where} = {value}: a perplexity must be > 0")
    data = table(runs)
    res = data[data["source"] == RESULTS]  # lm-eval's metrics, not the costs or routing shares
    # a metric's direction: the first model reporting it decides (its task's YAML, else HIGHER_IS_BETTER)
    hib = res.groupby("metric", sort=False)["higher_is_better"].first().astype(bool).to_dict()
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in res["model"].unique()}  # first-seen order
    for (name, task, metric), value in res.groupby(["model", "task", "metric"])["value"].mean().items():
        out[name].setdefault(task, {})[metric] = float(value)  # tasks and metrics sorted
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
                kind, low, high = allowed_range(base, metric, tol)
                if cur is None:
                    findings.append(Finding(model, task, metric, base, None, low, high, "missing", kind, higher))
                    continue
                up, down = cur > high, cur < low
                worse, better = (down, up) if higher else (up, down)
                status = "regressed" if worse else "improved" if better else "ok"
                findings.append(Finding(model, task, metric, base, cur, low, high, status, kind, higher))
    for model, tasks in current.items():
        for task, metrics in tasks.items():
            for metric, cur in metrics.items():
                if metric not in baseline.get("metrics", {}).get(model, {}).get(task, {}):
                    findings.append(Finding(model, task, metric, None, cur, None, None, "new", tolerance_kind(metric)))
    return findings


def make_baseline(run_dirs: list[str | Path], tolerances: dict[str, dict[str, float]] | None = None,
                  made_by: str | None = None, allow_improvement: bool = False) -> dict[str, Any]:
    current, hib, runs = current_metrics(run_dirs)
    versions = sorted({mr.results.get("lm_eval_version", "?") for r in runs for mr in r.models.values()})
    tol = {**default_tolerances(), **(tolerances or {})}
    return {
        "format": BASELINE_FORMAT,
        "made_by": made_by or "sopmoe regress --update --current " + " ".join(map(str, run_dirs)),
        "runs": [str(p) for p in run_dirs],
        "lm_eval_version": ", ".join(versions),
        "tolerance": {k: tol[k] for k in sorted(tol)},
        "allow_improvement": bool(allow_improvement),
        "higher_is_better": {k: hib[k] for k in sorted(hib)},
        "metrics": current,
    }


def read_baseline(path: str | Path) -> dict[str, Any]:
    """The baseline, every field checked (one line naming the file and the cell for any problem); a format 1 file is
    returned as format 2 with ``notes`` saying what was converted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: baseline not found (write one with `sopmoe regress --baseline {path} "
                                f"--current RUN_DIR --update`)")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") not in (BASELINE_FORMAT, LEGACY_FORMAT) \
            or not isinstance(data.get("metrics"), dict):
        raise UserError(f"{path}: not a sopmoe baseline (expected \"format\": \"{BASELINE_FORMAT}\" and \"metrics\"); "
                        "write one with `sopmoe regress --update`")
    fix = "fix it, or rewrite the baseline with `sopmoe regress --update`"
    for model, tasks in data["metrics"].items():
        if not isinstance(tasks, dict):
            raise UserError(f"{path}: metrics.{model} is not an object of tasks; {fix}")
        for task, metrics in tasks.items():
            if not isinstance(metrics, dict):
                raise UserError(f"{path}: metrics.{model}.{task} is not an object of metrics; {fix}")
            for metric, value in metrics.items():
                where = f"{path}: metrics.{model}.{task}.{metric}"
                if not is_number(value) or not math.isfinite(value):
                    raise UserError(f"{where} = {value!r} is not a finite number; {fix}")
                if tolerance_kind(metric) == "nats" and value <= 0:
                    raise UserError(f"{where} = {value!r}: a perplexity must be > 0; {fix}")
    notes: list[str] = []
    tolerance = data.get("tolerance", {})
    if not isinstance(tolerance, dict):
        raise UserError(f"{path}: tolerance is not an object; {fix}")
    clean: dict[str, dict[str, float]] = {}
    for metric, spec in tolerance.items():
        where = f"{path}: tolerance.{metric}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UserError(f"{where} = {spec!r}: expected {{\"abs\": N}} or {{\"nats\": N}}; {fix}")
        (kind, value), = spec.items()
        if not is_number(value) or not math.isfinite(value) or value < 0:
            raise UserError(f"{where}.{kind} = {value!r} is not a finite number >= 0; {fix}")
        if kind == "rel" and data["format"] == LEGACY_FORMAT:
            notes.append(f"{path} is format 1: its relative {metric} tolerance ({value:g}) is read as the format 2 "
                         f"default, {DEFAULT_NATS:g} nats/token on ln({metric}); --update writes format 2")
            continue
        if kind != tolerance_kind(metric):
            raise UserError(f"{where}: a {kind!r} tolerance does not fit {metric} (it takes {tolerance_kind(metric)!r}"
                            f"; perplexity-like metrics are in nats/token); {fix}")
        clean[metric] = {kind: float(value)}
    hib = data.get("higher_is_better", {})
    if not isinstance(hib, dict) or any(not isinstance(v, bool) for v in hib.values()):
        raise UserError(f"{path}: higher_is_better must map metric names to true/false; {fix}")
    allow = data.get("allow_improvement", False)
    if not isinstance(allow, bool):
        raise UserError(f"{path}: allow_improvement = {allow!r} must be true or false; {fix}")
    return {**data, "format": BASELINE_FORMAT, "tolerance": clean, "allow_improvement": allow, "notes": notes}


@dataclass
class RegressResult:
    findings: list[Finding]
    failed: list[Finding]
    updated: bool
    allow_improvement: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def regress(baseline_path: str | Path, run_dirs: list[str | Path], *, tolerance: str | None = None,
            update: bool = False, allow_missing: bool = False, allow_improvement: bool = False,
            command: str | None = None) -> RegressResult:
    """Compare (when a baseline exists) and, with ``update``, rewrite the baseline atomically from the runs."""
    tolerances = parse_tolerance(tolerance)
    path = Path(baseline_path)
    findings: list[Finding] = []
    previous: dict[str, Any] = {}
    current, hib, _ = current_metrics(run_dirs)  # checked even for a first --update
    if path.is_file() or not update:
        previous = read_baseline(path)
        findings = compare(previous, current, hib, tolerances)
    allow_imp = allow_improvement or bool(previous.get("allow_improvement", False))
    bad = {"regressed"} | (set() if allow_missing else {"missing"}) | (set() if allow_imp else {"improved"})
    failed = [f for f in findings if f.status in bad]
    if update:
        keep = {**previous.get("tolerance", {}), **tolerances}
        write_json(path, make_baseline(run_dirs, keep, command, previous.get("allow_improvement", False)))
        failed = []
    return RegressResult(findings, failed, update, allow_imp, list(previous.get("notes", [])))
