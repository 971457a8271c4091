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
:func:`task_metrics` turns that into ``{task: {metric: Metric(value, stderr)}}``; :func:`table` puts every run's
numbers (lm-eval's metrics, routing shares, costs) into one long pandas table, and :func:`sample_table` the
per-example records, which the leaderboard and the regression check aggregate.
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


COLUMNS = ("run", "seed", "model", "kind", "family", "task", "metric", "value", "stderr", "n", "higher_is_better",
           "source")
# meta.json's numbers, one row each per run and model (family and task empty); lower is better for all of them
COSTS = ("expert_forwards_per_token", "requests_s", "requests_cpu_s", "time_vs_foundation", "training_wall_s")
GATE = "gate_sft"  # routing.json: the mean gate on the sft expert over a task's scored tokens


def family_of(task: str) -> str:
    """A task's family: its name without the generation variant's ``_gen`` (``sop_strict_gen`` -> ``sop_strict``)."""
    return task.removesuffix("_gen")


def _timing_key(run: Run) -> str:
    """CPU seconds on a CPU run (robust to other processes on the cores), wall seconds on an accelerator."""
    metas = [mr.meta for mr in run.models.values()]
    on_cpu = all(m.get("device") == "cpu" and "requests_cpu_s" in m.get("time", {}) for m in metas)
    return "requests_cpu_s" if on_cpu else "requests_s"


def _costs(run: Run, mr: ModelRun) -> dict[str, float]:
    """meta.json's numbers: forwards per token, request seconds, their ratio to the run's foundation, training s."""
    meta, key = mr.meta, _timing_key(run)
    time = meta.get("time", {})
    base = run.models.get("foundation")
    base_s = base.meta.get("time", {}).get(key) if base else None
    out = {"expert_forwards_per_token": meta.get("inference_cost", {}).get("expert_forwards_per_token"),
           "requests_s": time.get("requests_s"), "requests_cpu_s": time.get("requests_cpu_s"),
           "time_vs_foundation": time[key] / base_s if _number(time.get(key)) is not None and base_s else None,
           "training_wall_s": meta.get("training", {}).get("wall_s")}
    return {k: float(out[k]) for k in COSTS if _number(out[k]) is not None}


def table(runs: list[Run], labels: list[str] | None = None):
    """Every number of the runs as one long pandas table, one row per run × model × task × metric (columns
    :data:`COLUMNS`, documented in :mod:`harness.leaderboard`), in run, model and task order."""
    import pandas as pd

    labels = labels or [str(run.path) for run in runs]
    rows: list[tuple] = []
    for seed, (label, run) in enumerate(zip(labels, runs)):
        for name, mr in run.models.items():
            head = (label, seed, name, str(mr.meta.get("kind", "")))
            for task, metrics in mr.metrics.items():
                for metric, m in metrics.items():
                    rows.append((*head, family_of(task), task, metric, m.value, m.stderr, mr.n_samples(task),
                                 mr.higher_is_better(task, metric), RESULTS))
            for task, entry in sorted(((mr.routing or {}).get("tasks") or {}).items()):
                if isinstance(entry, dict) and _number(entry.get("sft")) is not None:
                    rows.append((*head, family_of(task), task, GATE, float(entry["sft"]), None,
                                 entry.get("n_queries"), None, ROUTING))
            for metric, value in _costs(run, mr).items():
                rows.append((*head, "", "", metric, value, None, None, False, META))
    df = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    return df.astype({"seed": "int64", "value": "float64", "stderr": "float64", "n": "Int64",
                      "higher_is_better": "boolean"})


def sample_table(runs: list[Run], labels: list[str] | None = None, metric: str = "acc"):
    """Per-example values of ``metric`` (``samples/<task>.jsonl``, written with ``--log_samples``) of every task that
    reports it: columns run, seed, model, task, doc_id, value (empty where no run kept samples)."""
    import pandas as pd

    labels = labels or [str(run.path) for run in runs]
    frames = []
    for seed, (label, run) in enumerate(zip(labels, runs)):
        for name, mr in run.models.items():
            for task, metrics in mr.metrics.items():
                rows = mr.per_example(task, metric) if metric in metrics else None
                if rows:
                    frames.append(pd.DataFrame({"run": label, "seed": seed, "model": name, "task": task,
                                                "doc_id": list(rows), "value": list(rows.values())}))
    columns = ["run", "seed", "model", "task", "doc_id", "value"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
