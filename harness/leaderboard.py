"""``sopmoe leaderboard``: markdown tables, PNG charts, a JSON view and one tidy CSV from ``sopmoe evaluate`` run
folders, and nothing else.

Layout follows the seed's evaluate.py: per family (sop_strict, reasoning, mixed, eval, and whatever other task the runs
scored) a table of every metric per model (its 评估结果对比), then a summary (its 性能对比参考): per-family accuracy,
inference cost and training cost. Definitions (also written into the page):

- Perplexity is per target token: exp(-Σ log p(target) / Σ target tokens) over the family's examples (the
  tasks' ``weighted_perplexity``; lm-eval's plain ``perplexity`` would be per document).
- Accuracy is lm-eval's ``acc`` for a loglikelihood task: the share of examples whose whole target is the
  model's greedy continuation. Exact match / format OK come from the ``*_gen`` generation tasks when they ran.
- ± is lm-eval's standard error for one run; for several runs (seeds) the cell is the mean ± the sample
  standard deviation across runs.

Every number comes from one long table, :func:`harness.runs.table`, aggregated here with pandas; it is written as
``leaderboard.csv`` beside the board for analyses of one's own (``pandas.read_csv``, or :func:`read_table` for the
dtypes below). One row per run × model × task × metric; columns:

- ``run``: the run folder as given to ``sopmoe leaderboard``; ``seed``: its position among them (0, 1, ...: the
  demo passes one run per seed, in seed order);
- ``model``: the row label (``sopmoe evaluate --models``); ``kind``: its kind from ``meta.json`` (``btm`` and
  ``distill`` are trained fusions);
- ``family``: the task without its ``_gen`` suffix (``sop_strict_gen`` -> ``sop_strict``), empty for cost rows;
  ``task``: lm-eval's task name, empty for cost rows;
- ``metric``: lm-eval's metric (``acc``, ``acc_norm``, ``perplexity``: per token, ``exact_match``, ``format_ok``;
  ``name,filter`` for a filter other than ``none``), ``gate_sft`` (the mean gate on the sft expert, from
  ``routing.json``) or a cost from ``meta.json``: ``expert_forwards_per_token``, ``requests_s`` / ``requests_cpu_s``
  (seconds inside the model's lm-eval requests), ``time_vs_foundation`` (that time over ``foundation``'s in the same
  run: CPU seconds when the whole run was on CPU, else wall seconds) and ``training_wall_s``;
- ``value``; ``stderr``: lm-eval's standard error, empty where it gives none; ``n``: examples scored (lm-eval's
  ``n-samples``; routed queries for ``gate_sft``);
- ``higher_is_better``: the metric's direction (the task's, else sopmoe's default; costs: False; gates: empty);
- ``source``: the file the number came from (``results.json``, ``routing.json`` or ``meta.json``).

Costs are rows of the same table rather than a second one: they are numbers per run and model like any metric, so
one file holds everything and one aggregation (mean ± spread over runs) serves them all; ``source`` tells them apart.

Deterministic: the same run folders give the same bytes (markdown, CSV and PNG: no timestamps, fixed PNG metadata).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness.charts import to_pareto_png, to_png
from harness.runs import COLUMNS, META, RESULTS, ROUTING, Metric, family_of, read_runs, sample_table, table
from harness.stats import paired_bootstrap, wilson
from sopmoe_models.console import new_console
from sopmoe_models.outputs import write_atomic

CORE = ("sop_strict", "reasoning", "mixed")  # the seed's scenario: the summary's mean accuracy and the Pareto chart
# Trained fusions (routers, the student distilled from one, the MoE with trained gates) against everything else:
# the experts, the ensemble, the dispatch and replay baselines and the merges (issue 11's comparison).
FUSION_KINDS = ("btm", "distill", "moe")
README_BEGIN, README_END = "<!-- sopmoe:results:begin -->", "<!-- sopmoe:results:end -->"
# the test bed's and the real bed's (issue 12) results; `sopmoe ceiling`'s for each
README_SECTIONS = ("results", "real-results", "ceiling", "real-ceiling")


def readme_markers(section: str = "results") -> tuple[str, str]:
    if section not in README_SECTIONS:
        raise ValueError(f"unknown README section {section!r}; choose one of {', '.join(README_SECTIONS)}")
    return f"<!-- sopmoe:{section}:begin -->", f"<!-- sopmoe:{section}:end -->"


# Labels, and the order of families and metrics on the board; any other family or metric follows, sorted by name,
# under its own name.
FAMILY_TITLES = {"sop_strict": "SOP", "reasoning": "Reasoning", "reasoning_mc": "Reasoning (multiple choice)",
                 "mixed": "Mixed", "eval": "General (eval)"}
METRIC_TITLES = {"perplexity": "Perplexity", "acc": "Accuracy", "acc_norm": "Accuracy, length-normalised",
                 "exact_match": "Exact match", "format_ok": "Format OK"}
DEFINITIONS = (
    "Perplexity is per target token: exp(−Σ log p(target) / Σ target tokens) over the family's examples "
    "(lower is better). Accuracy is lm-eval's `acc`: the share of examples whose whole target is the model's "
    "greedy continuation. Exact match and format OK (the SOP steps, in order) come from the generation tasks "
    "(`*_gen`, greedy decoding) when they were run. ± is lm-eval's standard error (one run) or the sample standard "
    "deviation across runs (several runs); no ± where lm-eval gives none (e.g. per-token perplexity). "
    "**Bold**: best in its column."
)
# appended to the definitions when a board has the metric
METRIC_NOTES = {"acc_norm": (
    "On a multiple-choice task (e.g. `reasoning_mc`) Accuracy is lm-eval's `acc` there: the right choice has the "
    "highest log-likelihood of the choices; the length-normalised accuracy (`acc_norm`) divides each choice's "
    "log-likelihood by its length in characters first.")}


def ordered(names, order=FAMILY_TITLES) -> list[str]:
    """``names`` in the board's order: those ``order`` knows first, in its order, then the rest sorted."""
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)
    align: list[str] | None = None  # "l" | "r" per column


@dataclass
class Leaderboard:
    command: str
    sources: list[str]
    header: list[str]
    families: list[Table]
    summary: Table
    models: Table
    routing: Table | None
    notes: list[str]
    chart: dict[str, dict[str, Metric]]  # family -> model -> accuracy
    intervals: list[Table] = field(default_factory=list)  # per family: every model vs the best non-fusion one
    pareto: list[dict[str, Any]] = field(default_factory=list)  # name, mean acc, spread, forwards, time ratio
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # the tidy table (not in the JSON)

    def to_json(self) -> dict[str, Any]:
        d = asdict(replace(self, data=None))
        del d["data"]
        for t in [d["summary"], d["models"], *d["families"], *d["intervals"], *([d["routing"]] if d["routing"] else [])]:
            t["bold"] = sorted([list(b) for b in t["bold"]])
        d["chart"] = {f: {n: [m["value"], m["stderr"]] for n, m in per.items()} for f, per in d["chart"].items()}
        return {"format": "sopmoe-leaderboard/1", **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Leaderboard:
        if d.get("format") != "sopmoe-leaderboard/1":
            raise ValueError("not a sopmoe leaderboard JSON (format sopmoe-leaderboard/1)")

        def table(t: dict | None) -> Table | None:
            return None if t is None else Table(t["title"], t["columns"], t["rows"], {tuple(b) for b in t["bold"]},
                                                t.get("align"))

        return cls(d["command"], d["sources"], d["header"], [table(t) for t in d["families"]], table(d["summary"]),
                   table(d["models"]), table(d["routing"]), d["notes"],
                   {f: {n: Metric(*v) for n, v in per.items()} for f, per in d["chart"].items()},
                   [table(t) for t in d["intervals"]], d["pareto"])


def _fmt(m: Metric | None, metric: str) -> str:
    if m is None:
        return "–"
    digits = 3 if metric != "perplexity" or m.value < 100 else 1
    s = f"{m.value:.{digits}f}"
    return s + (f" ± {m.stderr:.{digits}f}" if m.stderr is not None else "")


def fmt_plain(m: Metric | None, digits: int, unit: str = "") -> str:
    if m is None:
        return "–"
    return f"{m.value:.{digits}f}{unit}" + (f" ± {m.stderr:.{digits}f}" if m.stderr is not None else "")


def _mark_best(table: Table, col: int, values: list[float | None], higher: bool, digits: int = 3) -> None:
    shown = [round(v, digits) if v is not None else None for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < 2 or len(set(present)) < 2:
        return
    best = max(present) if higher else min(present)
    for r, v in enumerate(shown):
        if v == best:
            table.bold.add((r, col))


def aggregate(df: pd.DataFrame, keys: list[str]) -> dict[tuple, Metric]:
    """Per ``keys`` (over the runs that have the cell): one run, its value and lm-eval's stderr (if any); several, the
    mean ± the sample standard deviation (ddof=1)."""
    if df.empty:
        return {}
    stderr = df["stderr"] if "stderr" in df else pd.Series(float("nan"), index=df.index)
    agg = df.assign(stderr=stderr).groupby(keys, sort=False).agg(
        value=("value", "mean"), std=("value", "std"), runs=("value", "size"), stderr=("stderr", "first"))
    spread = agg["std"].where(agg["runs"] > 1, agg["stderr"])
    return {(k if isinstance(k, tuple) else (k,)): Metric(float(v), None if pd.isna(s) else float(s))
            for k, v, s in zip(agg.index, agg["value"], spread)}


def _metric_title(metric: str, higher: bool) -> str:
    name, _, filt = metric.partition(",")
    return f"{METRIC_TITLES.get(name, name)}{f' ({filt})' if filt else ''} {'↑' if higher else '↓'}"


@dataclass
class _Cells:
    """The aggregated table: what every view reads."""
    names: list[str]  # model rows, in first-seen order
    metric: dict[tuple, Metric]  # (model, family, metric) -> mean ± spread of lm-eval's metrics
    cost: dict[tuple, Metric]  # (model, cost) -> mean ± spread
    forwards: dict[str, list[float]]  # model -> its expert forwards per token (distinct values over runs)
    gate: dict[tuple, Metric]  # (model, task) -> mean gate on the sft expert
    core_mean: dict[str, Metric]  # model -> mean acc over the CORE families it has, per run, then over runs
    higher: dict[str, bool]  # metric -> higher is better
    n: dict[tuple, int]  # (model, family) -> examples (first run that has them; the family's own task first)
    fusion: set[str]
    families: list[str]  # with any lm-eval metric, in board order
    acc_families: list[str]  # with acc


def cells(data: pd.DataFrame, names: list[str]) -> _Cells:
    res = data[data["source"] == RESULTS]
    twice = res[res.duplicated(["seed", "model", "family", "metric"], keep=False)]
    if not twice.empty:
        r = twice.iloc[0]
        raise ValueError(f"{r['run']}/{r['model']}: tasks {' and '.join(twice['task'].unique())} both report "
                         f"{r['metric']} for family {r['family']}; the board has one cell per family and metric")
    cost = data[data["source"] == META]
    acc = res[res["metric"] == "acc"]
    acc_families = ordered(acc["family"].unique())
    core = [f for f in CORE if f in acc_families]
    per_run = pd.Series(dtype=float)  # (model, seed) -> mean acc over the core families, runs that have them all
    if core:
        wide = acc[acc["family"].isin(core)].pivot(index=["model", "seed"], columns="family", values="value")
        per_run = wide[core].dropna().sum(axis=1) / len(core)
    fw = cost[(cost["metric"] == "expert_forwards_per_token") & (cost["value"] > 0)]
    counted = res[res["n"].notna()].assign(gen=res["task"] != res["family"]).sort_values(["seed", "gen"], kind="stable")
    return _Cells(
        names=names,
        metric=aggregate(res, ["model", "family", "metric"]),
        cost=aggregate(cost, ["model", "metric"]),
        forwards={m: sorted(set(v)) for m, v in fw.groupby("model")["value"]},
        gate=aggregate(data[data["source"] == ROUTING], ["model", "task"]),
        core_mean={m: c for (m,), c in aggregate(per_run.rename("value").reset_index(), ["model"]).items()},
        higher=res.groupby("metric", sort=False)["higher_is_better"].first().astype(bool).to_dict(),
        n={k: int(v) for k, v in counted.groupby(["model", "family"])["n"].first().items()},
        fusion=set(data.loc[data["kind"].isin(FUSION_KINDS), "model"]),
        families=ordered(res["family"].unique()),
        acc_families=acc_families,
    )


def _family_table(fam: str, c: _Cells) -> Table | None:
    metrics = ordered({m for (_, f, m) in c.metric if f == fam}, METRIC_TITLES)
    rows_for = [n for n in c.names if any((n, fam, m) in c.metric for m in metrics)]
    if not metrics:
        return None
    table = Table(fam, ["Model", *(_metric_title(m, c.higher.get(m, True)) for m in metrics), "n"],
                  align=["l"] + ["r"] * (len(metrics) + 1))
    for name in rows_for:
        n = c.n.get((name, fam))
        table.rows.append([name, *(_fmt(c.metric.get((name, fam, m)), m) for m in metrics),
                           "–" if n is None else str(n)])
    for col, m in enumerate(metrics, start=1):
        cell = [c.metric.get((n, fam, m)) for n in rows_for]
        _mark_best(table, col, [x.value if x else None for x in cell], c.higher.get(m, True))
    return table


def _forwards(c: _Cells, name: str) -> str:
    return " / ".join(f"{f:g}×" for f in c.forwards.get(name, [])) or "–"


def _summary_table(c: _Cells, trained_on: dict[str, str]) -> Table:
    fams = c.acc_families
    cols = [f"{FAMILY_TITLES.get(f, f)} acc ↑" for f in fams]
    core = [f for f in CORE if f in fams]
    has_mean = len(core) > 1
    if has_mean:
        cols.append(f"Mean acc ({', '.join(FAMILY_TITLES[f] for f in core)}) ↑")
    cols += ["Inference cost (expert forwards / token)", "Scoring time (× foundation)", "Training cost (wall s)",
             "Trained on"]
    table = Table("summary", ["Model", *cols], align=["l"] + ["r"] * (len(cols) - 1) + ["l"])
    accs: list[list[float | None]] = []
    for name in c.names:
        per = [c.metric.get((name, f, "acc")) for f in fams] + ([c.core_mean.get(name)] if has_mean else [])
        table.rows.append([name, *(_fmt(m, "acc") for m in per), _forwards(c, name),
                           fmt_plain(c.cost.get((name, "time_vs_foundation")), 2, "×"),
                           fmt_plain(c.cost.get((name, "training_wall_s")), 1), trained_on.get(name, "–")])
        accs.append([m.value if m else None for m in per])
    for col in range(len(fams) + int(has_mean)):
        _mark_best(table, col + 1, [v[col] for v in accs], True)
    return table


def _interval_tables(c: _Cells, samples: pd.DataFrame, n_runs: int) -> list[Table]:
    """Per family with accuracy: each model's accuracy (mean ± spread over runs), its pooled Wilson 95% interval, and
    the paired bootstrap 95% interval of its difference to the best model that is not a trained fusion; only where
    the per-example samples (``evaluate --log_samples``) are there."""
    tables = []
    for fam in c.acc_families:
        have = [n for n in c.names if (n, fam, "acc") in c.metric]
        others = [n for n in have if n not in c.fusion]
        if not others:
            continue
        mean = {n: c.metric[n, fam, "acc"].value for n in have}
        best_other = max(others, key=lambda n: (mean[n], -others.index(n)))
        s = samples[samples["task"].map(family_of) == fam]
        complete = set(s.groupby("model")["seed"].nunique().loc[lambda x: x == n_runs].index)  # samples in every run
        if best_other not in complete:
            continue
        pooled = s.groupby("model")["value"].agg(["sum", "count"])
        wide = s.pivot(index=["seed", "doc_id"], columns="model", values="value")  # paired by example
        t = Table(fam, ["Model", "Accuracy ↑", "Wilson 95% (pooled)", f"Δ vs {best_other} (paired bootstrap 95%)"],
                  align=["l", "r", "r", "r"])
        for n in have:
            w, delta = "–", "–"
            if n in complete:
                lo, hi = wilson(float(pooled.loc[n, "sum"]), int(pooled.loc[n, "count"]))
                w = f"[{lo:.3f}, {hi:.3f}]"
            if n == best_other:
                delta = "(reference)"
            elif n in complete and wide[n].notna().equals(wide[best_other].notna()):
                per_run = [wide.loc[seed, [n, best_other]].dropna() for seed in range(n_runs)]
                b = paired_bootstrap([p[n].tolist() for p in per_run], [p[best_other].tolist() for p in per_run])
                delta = f"{b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]"
            t.rows.append([n + (" (fusion)" if n in c.fusion else ""), _fmt(c.metric[n, fam, "acc"], "acc"), w, delta])
        _mark_best(t, 1, [mean[n] for n in have], True)
        tables.append(t)
    return tables


def _pareto_points(c: _Cells) -> list[dict[str, Any]]:
    points = []
    for name in c.names:
        mean = c.core_mean.get(name)
        if mean is None or any((name, f, "acc") not in c.metric for f in CORE):
            continue
        ratio, forwards = c.cost.get((name, "time_vs_foundation")), c.forwards.get(name)
        points.append({"name": name, "mean_acc": mean.value, "spread": mean.stderr,
                       "forwards": (int(forwards[0]) if forwards[0].is_integer() else forwards[0]) if forwards else None,
                       "time_ratio": ratio.value if ratio else None, "fusion": name in c.fusion})
    return points


def _routing_table(c: _Cells) -> Table | None:
    """Mean gate on sft per task for models whose adapter kept routing statistics (``routing.json``:
    ``{"tasks": {task: {"foundation": share, "sft": share, ...}}}``), averaged over runs."""
    if not c.gate:
        return None
    tasks = ordered({t for _, t in c.gate})
    table = Table("routing", ["Model", *(f"{t}: sft share" for t in tasks)], align=["l"] + ["r"] * len(tasks))
    for name in (n for n in c.names if any(m == n for m, _ in c.gate)):
        table.rows.append([name, *(_fmt(c.gate.get((name, t)), "acc") for t in tasks)])
    return table


def build(run_dirs: list[str | Path], command: str | None = None) -> Leaderboard:
    """Read the run folders into the tidy table and build every view of it (no files written)."""
    runs = read_runs(run_dirs)
    sources = [str(p) for p in run_dirs]
    data = table(runs, sources)
    names = list(dict.fromkeys(name for run in runs for name in run.models))  # first-seen order
    c = cells(data, names)
    command = command or "sopmoe leaderboard " + " ".join(sources)
    families = [t for f in c.families if (t := _family_table(f, c)) is not None]
    first, trained_on = {}, {}
    for run in runs:
        for name, mr in run.models.items():
            first.setdefault(name, mr)
            if mr.meta.get("training", {}).get("data"):  # what data made it, as its training record states
                trained_on.setdefault(name, str(mr.meta["training"]["data"]))
    models = Table("models", ["Model", "lm-eval model", "model_args"], align=["l", "l", "l"])
    for name in names:
        meta = first[name].meta
        cfg = first[name].results.get("config", {})
        args = meta.get("model_args", cfg.get("model_args", {}))
        args_s = ",".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else str(args)
        models.rows.append([name, meta.get("lm_eval_model", cfg.get("model", "?")), f"`{args_s}`"])
    r0 = runs[0]
    versions = sorted({mr.results.get("lm_eval_version", "?") for run in runs for mr in run.models.values()})
    tasks = r0.summary.get("tasks") or sorted({t for mr in r0.models.values() for t in mr.metrics})
    limit = r0.summary.get("limit")
    header = [
        f"Source: {len(runs)} run{'s' if len(runs) > 1 else ''} ({', '.join(f'`{s}`' for s in sources)}); "
        f"lm-eval {', '.join(versions)}; tasks {', '.join(tasks)}; "
        f"{'all examples' if limit is None else f'limit {limit} examples per task'}.",
        " ".join([DEFINITIONS, *(note for m, note in METRIC_NOTES.items() if m in c.higher)]),
    ]
    notes = []
    for src, run in zip(sources, runs):
        for name, reason in run.skipped.items():
            notes.append(f"`{name}` not evaluated in `{src}`: {reason}")
    chart = {t.title: {n: c.metric[n, t.title, "acc"] for n in names if (n, t.title, "acc") in c.metric}
             for t in families}
    machines = sorted({json.dumps(run.summary.get("machine"), sort_keys=True) for run in runs
                       if run.summary.get("machine")})
    if machines:
        m = json.loads(machines[0])
        header.append(f"Times (scoring time, training cost) were measured by `sopmoe evaluate` and the training "
                      f"commands on {m.get('cpus', '?')}-CPU {m.get('platform', '?')}, {m.get('device', '?')}, "
                      f"torch {m.get('torch_threads', '?')} thread(s){' (and others)' if len(machines) > 1 else ''}; "
                      "they change with the machine and its load, the accuracies do not.")
    return Leaderboard(command, sources, header, families, _summary_table(c, trained_on), models, _routing_table(c),
                       notes, chart, _interval_tables(c, sample_table(runs, sources), len(runs)), _pareto_points(c),
                       data)


def to_csv(data: pd.DataFrame) -> bytes:
    """The tidy table as CSV (UTF-8, ``\\n`` line ends, floats as Python writes them: they read back exactly)."""
    return data.to_csv(index=False, lineterminator="\n").encode("utf-8")


def read_table(path: str | Path) -> pd.DataFrame:
    """A ``leaderboard.csv`` back as the table :func:`harness.runs.table` made (empty family/task stay ``""``)."""
    df = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in ("value", "stderr", "n",
                                                                              "higher_is_better")},
                     float_precision="round_trip",  # pandas 2's default parser can be an ulp off
                     dtype={"run": str, "model": str, "kind": str, "family": str, "task": str, "metric": str,
                            "source": str, "seed": "int64", "value": "float64", "stderr": "float64", "n": "Int64",
                            "higher_is_better": "boolean"})
    if list(df.columns) != list(COLUMNS):
        raise ValueError(f"{path}: not a sopmoe leaderboard table (columns {', '.join(COLUMNS)})")
    return df


def md_table(t: Table) -> list[str]:
    def cell(r: int, c: int, text: str) -> str:
        text = text.replace("|", "\\|")
        return f"**{text}**" if (r, c) in t.bold else text

    align = t.align or ["l"] * len(t.columns)
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    lines += ["| " + " | ".join(cell(r, c, x) for c, x in enumerate(row)) + " |" for r, row in enumerate(t.rows)]
    return lines


def to_markdown(lb: Leaderboard) -> str:
    out = [f"<!-- generated by `{lb.command}` — do not edit -->", "# sopmoe leaderboard", ""]
    for para in lb.header:
        out += [para, ""]
    out += ["## Per family (评估结果对比)", ""]
    for t in lb.families:
        out += [f"### {t.title}", "", *md_table(t), ""]
    out += ["## Summary (性能对比参考)", "", *md_table(lb.summary), "",
            "Inference cost: expert forward passes per generated/scored token by construction (1 = one model), and "
            "the measured time inside the model's lm-eval requests relative to `foundation` in the same run (CPU "
            "seconds for CPU runs, which other processes sharing the cores inflate less; wall seconds on a GPU): "
            "a measurement on whatever else the machine was doing, so read it next to the forward count; "
            "`benchmarks/` give controlled ratios. "
            "Training cost: wall-clock seconds of the step that produced the model from its inputs (test bed "
            "pretraining / fine-tuning, router training, distillation, merge), as its own record states; the "
            "ensemble is training-free.", ""]
    if lb.intervals:
        out += ["## Intervals", "", INTERVALS_TEXT, ""]
        for t in lb.intervals:
            out += [f"### {t.title}", "", *md_table(t), ""]
    if lb.routing is not None:
        out += ["## Routing", "", "Mean gate on the sft expert over the scored tokens, per task (foundation = 1 − "
                "sft; per-layer detail in the run's `routing.json`).", "", *md_table(lb.routing), ""]
    out += ["## Models", "", *md_table(lb.models), ""]
    if lb.notes:
        out += ["## Not evaluated", "", *(f"- {n}" for n in lb.notes), ""]
    return "\n".join(out)


INTERVALS_TEXT = (
    "Accuracy: mean ± sample standard deviation over runs (seeds). Wilson 95%: the score interval of the pooled "
    "rate (all seeds' examples together; not degenerate at 0 or 1). Δ: the model's accuracy minus the best model "
    "that is not a trained fusion (experts, ensemble, dispatch, replay_sft, merges), averaged over seeds, with the "
    "95% percentile interval of a paired bootstrap (2000 resamples of each seed's test examples, the same resample "
    "for both models). An interval that excludes 0 is a difference the test sets can tell.")


def readme_block(lb: Leaderboard, section: str = "results") -> str:
    """The README's results section: the summary and the intervals, generated from the leaderboard (never typed)."""
    begin, end = readme_markers(section)
    source = "results/leaderboard.json" if section == "results" else "results/real/leaderboard.json"
    out = [begin, f"<!-- generated by `{lb.command}` from the committed {source} — do not edit -->", "", *lb.header[:1], "", *md_table(lb.summary), ""]
    for t in lb.intervals:
        out += [f"**{t.title}** — " + INTERVALS_TEXT.split(". ")[0] + "; Δ vs the best non-fusion model, paired "
                "bootstrap 95%:", "", *md_table(t), ""]
    if lb.routing is not None:
        out += ["Mean gate on the sft expert per task (routers):", "", *md_table(lb.routing), ""]
    out.append(end)
    return "\n".join(out)


def update_readme(path: Path, lb: Leaderboard, section: str = "results") -> None:
    """Replace the block between the ``section`` markers of ``path`` (which must have them) by :func:`readme_block`."""
    replace_readme_section(path, section, readme_block(lb, section))


def replace_readme_section(path: Path, section: str, block: str) -> None:
    """Replace the block between the ``section`` markers of ``path`` (which must have them) by ``block``."""
    begin, end = readme_markers(section)
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise ValueError(f"{path}: no {section} section ({begin} ... {end}) to regenerate")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_atomic(path, (head + block + tail).encode("utf-8"))


def write_leaderboard(run_dirs: list[str | Path], out: str | Path, png: str | Path | None = None,
                      command: str | None = None, *, pareto: str | Path | None = None,
                      json_path: str | Path | None = None, readme: str | Path | None = None,
                      readme_section: str = "results", csv: str | Path | None = None) -> Leaderboard:
    """Build the leaderboard from the run folders and write the markdown (and the charts, the JSON the README is
    generated from, the README's results section and the tidy CSV) atomically."""
    lb = build(run_dirs, command)
    write_outputs(lb, out, png, pareto=pareto, json_path=json_path, readme=readme, readme_section=readme_section,
                  csv=csv)
    return lb


def write_outputs(lb: Leaderboard, out: str | Path, png: str | Path | None = None, *, pareto: str | Path | None = None,
                  json_path: str | Path | None = None, readme: str | Path | None = None,
                  readme_section: str = "results", csv: str | Path | None = None) -> None:
    if csv is not None and lb.data is None:
        raise ValueError(f"--csv {csv}: the table comes from run folders; a leaderboard read from JSON has none")
    write_atomic(Path(out), to_markdown(lb).encode("utf-8"))
    if png is not None:
        write_atomic(Path(png), to_png(lb))
    if pareto is not None:
        write_atomic(Path(pareto), to_pareto_png(lb))
    if json_path is not None:
        write_atomic(Path(json_path), (json.dumps(lb.to_json(), indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    if csv is not None:
        write_atomic(Path(csv), to_csv(lb.data))
    if readme is not None:
        update_readme(Path(readme), lb, readme_section)


def print_rich(lb: Leaderboard, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = console or new_console()
    for t in [*lb.families, lb.summary, *([lb.routing] if lb.routing else [])]:
        rt = RichTable(title=escape(t.title))
        for c, col in enumerate(t.columns):
            rt.add_column(escape(col), justify="right" if (t.align or [])[c:c + 1] == ["r"] else "left")
        for r, row in enumerate(t.rows):
            rt.add_row(*(f"[bold green]{escape(x)}[/]" if (r, c) in t.bold else escape(x) for c, x in enumerate(row)))
        console.print(rt)
    for n in lb.notes:
        console.print(f"[yellow]{escape(n)}[/]")
