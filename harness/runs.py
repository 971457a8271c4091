"""The evaluation run folder: what ``sopmoe evaluate`` writes and what ``sopmoe leaderboard``/``regress`` read.

Layout of ``RUN_DIR`` (one ``sopmoe evaluate`` call)::

    RUN_DIR/config.yaml            the resolved sopmoe config
    RUN_DIR/summary.json           tasks, limit, the model specs, and which models ran / were skipped / failed (why)
    RUN_DIR/<model>/results.json   lm-eval's own results dict (``simple_evaluate``'s return value, samples left out)
    RUN_DIR/<model>/meta.json      lm-eval model name + args, wall/CPU seconds, inference and training cost
    RUN_DIR/<model>/routing.json   routing statistics, when the adapter produced them
    RUN_DIR/<model>/samples/*.jsonl  per-example records (only with ``--log_samples``)

lm-eval names each metric ``"<metric>,<filter>"`` (``"acc,none"``) and its standard error
``"<metric>_stderr,<filter>"``; ``"N/A"`` where it has none (e.g. one example, or ``weighted_perplexity``).
:func:`task_metrics` turns that into ``{task: {metric: Metric(value, stderr)}}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sopmoe_models.outputs import write_json  # noqa: F401  (atomic; harness.evaluate and harness.regress use it from here)

SUMMARY = "summary.json"
RESULTS = "results.json"
META = "meta.json"
ROUTING = "routing.json"
RUN_FORMAT = "sopmoe-run/1"

# Direction of the metrics our tasks report, for files that lack lm-eval's ``higher_is_better`` table.
HIGHER_IS_BETTER = {"acc": True, "exact_match": True, "format_ok": True, "perplexity": False}


@dataclass(frozen=True)
class Metric:
    value: float
    stderr: float | None = None


@dataclass
class ModelRun:
    name: str
    results: dict[str, Any]
    meta: dict[str, Any]
    routing: dict[str, Any] | None = None
    path: Path | None = None  # the model's folder in the run (for per-example samples)

    @property
    def metrics(self) -> dict[str, dict[str, Metric]]:
        return task_metrics(self.results)

    def higher_is_better(self, task: str, metric: str) -> bool:
        hib = self.results.get("higher_is_better", {}).get(task, {})
        if metric in hib:
            return bool(hib[metric])
        return HIGHER_IS_BETTER.get(metric.split(",")[0], True)

    def per_example(self, task: str, metric: str = "acc") -> dict[int, float] | None:
        """``{doc_id: value}`` of one metric from ``samples/<task>.jsonl`` (``--log_samples``), else None."""
        path = self.path / "samples" / f"{task}.jsonl" if self.path else None
        if path is None or not path.is_file():
            return None
        out: dict[int, float] = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[int(row["doc_id"])] = float(row[metric])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{lineno}: not a sample record with doc_id and {metric}") from None
        return out

    def n_samples(self, task: str) -> int | None:
        n = self.results.get("n-samples", {}).get(task, {})
        return n.get("effective") if isinstance(n, dict) else None


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    models: dict[str, ModelRun] = field(default_factory=dict)  # in evaluation order

    @property
    def skipped(self) -> dict[str, str]:
        return {m["name"]: m.get("reason", "") for m in self.summary.get("models", []) if m.get("status") != "ran"}


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, Metric]]:
    """``{task: {metric: Metric}}`` from an lm-eval results dict (filter ``none`` drops its suffix)."""
    out: dict[str, dict[str, Metric]] = {}
    for task, row in sorted(results.get("results", {}).items()):
        metrics: dict[str, Metric] = {}
        for key, value in row.items():
            if "," not in key or "_stderr," in key:
                continue
            name, filt = key.split(",", 1)
            v = _number(value)
            if v is None:
                continue
            label = name if filt == "none" else f"{name},{filt}"
            metrics[label] = Metric(v, _number(row.get(f"{name}_stderr,{filt}")))
        if metrics:
            out[task] = metrics
    return out


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def read_run(path: str | Path) -> Run:
    """Read one run folder: the models ``summary.json`` says ran, in its order (without a summary: every
    ``<model>/results.json``, sorted by name)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: run folder not found (make one with `sopmoe evaluate --output_dir {path}`)")
    summary = read_json(path / SUMMARY) if (path / SUMMARY).is_file() else {}
    if summary:
        names = [m["name"] for m in summary.get("models", []) if m.get("status") == "ran"]
    else:
        names = sorted(p.parent.name for p in path.glob(f"*/{RESULTS}"))
    run = Run(path, summary)
    for name in names:
        d = path / name
        if not (d / RESULTS).is_file():
            raise FileNotFoundError(f"{d / RESULTS}: not found but {path / SUMMARY} says model {name!r} ran")
        meta = read_json(d / META) if (d / META).is_file() else {}
        routing = read_json(d / ROUTING) if (d / ROUTING).is_file() else None
        run.models[name] = ModelRun(name, read_json(d / RESULTS), meta, routing, d)
    if not run.models and not run.skipped:
        raise ValueError(f"{path}: no model results (expected {path}/<model>/{RESULTS}, written by `sopmoe evaluate`)")
    return run


def read_runs(paths: list[str | Path]) -> list[Run]:
    if not paths:
        raise ValueError("no run folder given")
    return [read_run(p) for p in paths]


def model_order(runs: list[Run]) -> list[str]:
    """Model names in first-seen order across runs."""
    seen: dict[str, None] = {}
    for run in runs:
        for name in run.models:
            seen.setdefault(name, None)
    return list(seen)


def collect(runs: list[Run]) -> dict[str, dict[str, dict[str, list[Metric]]]]:
    """``{model: {task: {metric: [Metric per run]}}}`` across runs (runs lacking a cell contribute nothing)."""
    out: dict[str, dict[str, dict[str, list[Metric]]]] = {}
    for run in runs:
        for name, mr in run.models.items():
            for task, metrics in mr.metrics.items():
                for metric, m in metrics.items():
                    out.setdefault(name, {}).setdefault(task, {}).setdefault(metric, []).append(m)
    return out


def metric_directions(runs: list[Run]) -> dict[str, bool]:
    """``{metric: higher is better}`` across runs: the first model reporting a metric decides (its task's YAML, else
    :data:`HIGHER_IS_BETTER`, through :meth:`ModelRun.higher_is_better`)."""
    hib: dict[str, bool] = {}
    for run in runs:
        for mr in run.models.values():
            for task, metrics in mr.metrics.items():
                for metric in metrics:
                    hib.setdefault(metric, mr.higher_is_better(task, metric))
    return hib


def mean_spread(values: list[Metric]) -> Metric:
    """One run: its value and lm-eval's stderr. Several: the mean and the sample standard deviation (ddof=1)."""
    if len(values) == 1:
        return values[0]
    xs = [m.value for m in values]
    mu = sum(xs) / len(xs)
    return Metric(mu, math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)))
