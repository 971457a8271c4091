"""``sopmoe leaderboard``: markdown tables and a PNG chart from ``sopmoe evaluate`` run folders, and nothing else.

Layout follows the seed's evaluate.py: per family (sop_strict, reasoning, mixed, eval) a table of Perplexity and
Accuracy per model (its 评估结果对比), then a summary (its 性能对比参考): per-family accuracy, inference cost and
training cost. Definitions (also written into the page):

- Perplexity is per target token: exp(-Σ log p(target) / Σ target tokens) over the family's examples (the
  tasks' ``weighted_perplexity``; lm-eval's plain ``perplexity`` would be per document).
- Accuracy is lm-eval's ``acc`` for a loglikelihood task: the share of examples whose whole target is the
  model's greedy continuation. Exact match / format OK come from the ``*_gen`` generation tasks when they ran.
- ± is lm-eval's standard error for one run; for several runs (seeds) the cell is the mean ± the sample
  standard deviation across runs.

Deterministic: the same run folders give the same bytes (markdown and PNG: no timestamps, fixed PNG metadata).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.runs import Metric, Run, collect, mean_spread, metric_directions, model_order, read_runs
from harness.stats import paired_bootstrap, wilson
from sopmoe_models.data import FAMILIES
from sopmoe_models.outputs import write_atomic

CORE = ("sop_strict", "reasoning", "mixed")
# Trained fusions (routers and the student distilled from one) against everything else: the experts, the ensemble,
# the dispatch and replay baselines and the merges (issue 11's comparison).
FUSION_KINDS = ("btm", "distill")
README_BEGIN, README_END = "<!-- sopmoe:results:begin -->", "<!-- sopmoe:results:end -->"
# the test bed's and the real bed's (issue 12) results; `sopmoe ceiling`'s for each
README_SECTIONS = ("results", "real-results", "ceiling", "real-ceiling")


def readme_markers(section: str = "results") -> tuple[str, str]:
    if section not in README_SECTIONS:
        raise ValueError(f"unknown README section {section!r}; choose one of {', '.join(README_SECTIONS)}")
    return f"<!-- sopmoe:{section}:begin -->", f"<!-- sopmoe:{section}:end -->"
FAMILY_TITLES = {"sop_strict": "SOP", "reasoning": "Reasoning", "mixed": "Mixed", "eval": "General (eval)"}
# (header, task suffix, metric)
FAMILY_COLUMNS = (
    ("Perplexity ↓", "", "perplexity"),
    ("Accuracy ↑", "", "acc"),
    ("Exact match ↑", "_gen", "exact_match"),
    ("Format OK ↑", "_gen", "format_ok"),
)
DEFINITIONS = (
    "Perplexity is per target token: exp(−Σ log p(target) / Σ target tokens) over the family's examples "
    "(lower is better). Accuracy is lm-eval's `acc`: the share of examples whose whole target is the model's "
    "greedy continuation. Exact match and format OK (the SOP steps, in order) come from the generation tasks "
    "(`*_gen`, greedy decoding) when they were run. ± is lm-eval's standard error (one run) or the sample standard "
    "deviation across runs (several runs); no ± where lm-eval gives none (e.g. per-token perplexity). "
    "**Bold**: best in its column."
)


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
    intervals: list[Table] = field(default_factory=list)  # per core family: every model vs the best non-fusion one
    pareto: list[dict[str, Any]] = field(default_factory=list)  # name, mean acc, spread, forwards, time ratio

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
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


def _family_table(fam: str, names: list[str], cells, hib, n_by: dict[str, dict[str, str]]) -> Table | None:
    cols = [(h, fam + suffix, metric) for h, suffix, metric in FAMILY_COLUMNS
            if any(cells.get(n, {}).get(fam + suffix, {}).get(metric) for n in names)]
    rows_for = [n for n in names if any(cells.get(n, {}).get(t, {}).get(m) for _, t, m in cols)]
    if not cols:
        return None
    table = Table(fam, ["Model", *(h for h, _, _ in cols), "n"], align=["l"] + ["r"] * (len(cols) + 1))
    for name in rows_for:
        row = [name]
        for _, task, metric in cols:
            vals = cells.get(name, {}).get(task, {}).get(metric)
            row.append(_fmt(mean_spread(vals) if vals else None, metric))
        row.append(n_by.get(name, {}).get(fam, "–"))
        table.rows.append(row)
    for c, (_, task, metric) in enumerate(cols, start=1):
        vals = [cells.get(n, {}).get(task, {}).get(metric) for n in rows_for]
        _mark_best(table, c, [mean_spread(v).value if v else None for v in vals], hib.get(metric, True))
    return table


def _mean(xs: list[float]) -> Metric | None:
    xs = [x for x in xs if x is not None]
    return mean_spread([Metric(x) for x in xs]) if xs else None


def _timing_key(run: Run) -> str:
    """CPU seconds on a CPU run (robust to other processes on the cores), wall seconds on an accelerator."""
    metas = [mr.meta for mr in run.models.values()]
    on_cpu = all(m.get("device") == "cpu" and "requests_cpu_s" in m.get("time", {}) for m in metas)
    return "requests_cpu_s" if on_cpu else "requests_s"


def _costs(runs: list[Run], name: str) -> tuple[str, Metric | None, Metric | None]:
    forwards, ratios, train = set(), [], []
    for run in runs:
        mr = run.models.get(name)
        if mr is None:
            continue
        forwards.add(mr.meta.get("inference_cost", {}).get("expert_forwards_per_token"))
        base = run.models.get("foundation")
        key = _timing_key(run)
        mine = mr.meta.get("time", {}).get(key)
        base_s = base.meta.get("time", {}).get(key) if base else None
        if mine is not None and base_s:
            ratios.append(mine / base_s)
        train.append(mr.meta.get("training", {}).get("wall_s"))
    fw = "–" if forwards in (set(), {None}) else " / ".join(f"{f}×" for f in sorted(x for x in forwards if x))
    return fw, _mean(ratios), _mean(train)


def _summary_table(runs: list[Run], names: list[str], cells) -> Table:
    fams = [f for f in FAMILIES if any(cells.get(n, {}).get(f, {}).get("acc") for n in names)]
    cols = [f"{FAMILY_TITLES[f]} acc ↑" for f in fams]
    core = [f for f in ("sop_strict", "reasoning", "mixed") if f in fams]
    has_mean = len(core) > 1
    if has_mean:
        cols.append(f"Mean acc ({', '.join(FAMILY_TITLES[f] for f in core)}) ↑")
    cols += ["Inference cost (expert forwards / token)", "Scoring time (× foundation)", "Training cost (wall s)",
             "Trained on"]
    table = Table("summary", ["Model", *cols], align=["l"] + ["r"] * (len(cols) - 1) + ["l"])
    accs: list[list[float | None]] = []
    for name in names:
        per = [mean_spread(v) if (v := cells.get(name, {}).get(f, {}).get("acc")) else None for f in fams]
        row = [name, *(_fmt(m, "acc") for m in per)]
        values = [m.value if m else None for m in per]
        if has_mean:
            # mean over the core families, per run, then across runs (so the spread is the runs')
            lists = [cells.get(name, {}).get(f, {}).get("acc") or [] for f in core]
            mean = _mean([sum(m.value for m in ms) / len(ms) for ms in zip(*lists)])
            row.append(_fmt(mean, "acc"))
            values.append(mean.value if mean else None)
        fw, ratio, train = _costs(runs, name)
        row += [fw, fmt_plain(ratio, 2, "×"), fmt_plain(train, 1), _trained_on(runs, name)]
        table.rows.append(row)
        accs.append(values)
    for c in range(len(fams) + int(has_mean)):
        _mark_best(table, c + 1, [v[c] for v in accs], True)
    return table


def _trained_on(runs: list[Run], name: str) -> str:
    """What data made this model, as its training record states (``meta.json`` ``training.data``)."""
    for run in runs:
        mr = run.models.get(name)
        if mr is not None and mr.meta.get("training", {}).get("data"):
            return str(mr.meta["training"]["data"])
    return "–"


def _is_fusion(runs: list[Run], name: str) -> bool:
    return any(run.models[name].meta.get("kind") in FUSION_KINDS for run in runs if name in run.models)


def _per_example(runs: list[Run], name: str, fam: str) -> list[list[float]] | None:
    """Per seed (run), the 0/1 accuracy of each test example in doc order; None when a run lacks the samples."""
    out = []
    for run in runs:
        mr = run.models.get(name)
        rows = mr.per_example(fam) if mr is not None else None
        if rows is None:
            return None
        out.append([rows[k] for k in sorted(rows)])
    return out


def _interval_tables(runs: list[Run], names: list[str], cells) -> list[Table]:
    """Per core family: each model's accuracy (mean ± spread over runs), its pooled Wilson 95% interval, and the
    paired bootstrap 95% interval of its difference to the best model that is not a trained fusion."""
    tables = []
    for fam in CORE:
        have = [n for n in names if cells.get(n, {}).get(fam, {}).get("acc")]
        others = [n for n in have if not _is_fusion(runs, n)]
        if not have or not others:
            continue
        mean = {n: mean_spread(cells[n][fam]["acc"]).value for n in have}
        best_other = max(others, key=lambda n: (mean[n], -others.index(n)))
        ref = _per_example(runs, best_other, fam)
        if ref is None:  # no per-example samples (evaluate --log_samples): no paired interval to give
            continue
        t = Table(fam, ["Model", "Accuracy ↑", "Wilson 95% (pooled)", f"Δ vs {best_other} (paired bootstrap 95%)"],
                  align=["l", "r", "r", "r"])
        for n in have:
            acc = mean_spread(cells[n][fam]["acc"])
            mine = _per_example(runs, n, fam)
            if mine is not None:
                k, total = sum(sum(x) for x in mine), sum(len(x) for x in mine)
                lo, hi = wilson(k, total)
                w = f"[{lo:.3f}, {hi:.3f}]"
            else:
                w = "–"
            if n == best_other:
                delta = "(reference)"
            elif mine is not None and ref is not None and [len(x) for x in mine] == [len(x) for x in ref]:
                b = paired_bootstrap(mine, ref)
                delta = f"{b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]"
            else:
                delta = "–"
            t.rows.append([n + (" (fusion)" if _is_fusion(runs, n) else ""), _fmt(acc, "acc"), w, delta])
        _mark_best(t, 1, [mean[n] for n in have], True)
        tables.append(t)
    return tables


def _pareto_points(runs: list[Run], names: list[str], cells) -> list[dict[str, Any]]:
    points = []
    for name in names:
        lists = [cells.get(name, {}).get(f, {}).get("acc") or [] for f in CORE]
        if not all(lists):
            continue
        mean = _mean([sum(m.value for m in ms) / len(ms) for ms in zip(*lists)])
        fw, ratio, _ = _costs(runs, name)
        forwards = [int(x[:-1]) for x in fw.split(" / ") if x.endswith("×")]
        points.append({"name": name, "mean_acc": mean.value, "spread": mean.stderr,
                       "forwards": forwards[0] if forwards else None, "time_ratio": ratio.value if ratio else None,
                       "fusion": _is_fusion(runs, name)})
    return points


def build(run_dirs: list[str | Path], command: str | None = None) -> Leaderboard:
    """Read the run folders and build every table (no files written)."""
    runs = read_runs(run_dirs)
    names = model_order(runs)
    cells = collect(runs)
    hib = metric_directions(runs)
    n_by: dict[str, dict[str, str]] = {}
    for run in runs:
        for mr in run.models.values():
            n = n_by.setdefault(mr.name, {})
            for fam in FAMILIES:
                k = mr.n_samples(fam) or mr.n_samples(fam + "_gen")
                if k is not None:
                    n.setdefault(fam, str(k))
    sources = [str(p) for p in run_dirs]
    command = command or "sopmoe leaderboard " + " ".join(sources)
    families = [t for f in FAMILIES if (t := _family_table(f, names, cells, hib, n_by)) is not None]
    first = {}
    for run in runs:
        for name, mr in run.models.items():
            first.setdefault(name, mr)
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
        DEFINITIONS,
    ]
    notes = []
    for src, run in zip(sources, runs):
        for name, reason in run.skipped.items():
            notes.append(f"`{name}` not evaluated in `{src}`: {reason}")
    chart = {t.title: {n: mean_spread(cells[n][t.title]["acc"]) for n in names
                       if cells.get(n, {}).get(t.title, {}).get("acc")} for t in families}
    machines = sorted({json.dumps(run.summary.get("machine"), sort_keys=True) for run in runs
                       if run.summary.get("machine")})
    if machines:
        m = json.loads(machines[0])
        header.append(f"Times (scoring time, training cost) were measured by `sopmoe evaluate` and the training "
                      f"commands on {m.get('cpus', '?')}-CPU {m.get('platform', '?')}, {m.get('device', '?')}, "
                      f"torch {m.get('torch_threads', '?')} thread(s){' (and others)' if len(machines) > 1 else ''}; "
                      "they change with the machine and its load, the accuracies do not.")
    return Leaderboard(command, sources, header, families, _summary_table(runs, names, cells), models,
                       _routing_table(runs, names), notes, chart, _interval_tables(runs, names, cells),
                       _pareto_points(runs, names, cells))


def _routing_table(runs: list[Run], names: list[str]) -> Table | None:
    """Mean gate on sft per task for models whose adapter kept routing statistics (``routing.json``:
    ``{"tasks": {task: {"foundation": share, "sft": share, ...}}}``), averaged over runs."""
    shares: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for name, mr in run.models.items():
            for task, entry in ((mr.routing or {}).get("tasks") or {}).items():
                if isinstance(entry, dict) and isinstance(entry.get("sft"), (int, float)):
                    shares.setdefault(name, {}).setdefault(task, []).append(float(entry["sft"]))
    if not shares:
        return None
    seen = {t for per in shares.values() for t in per}
    tasks = [f for f in FAMILIES if f in seen] + sorted(seen - set(FAMILIES))
    table = Table("routing", ["Model", *(f"{t}: sft share" for t in tasks)], align=["l"] + ["r"] * len(tasks))
    for name in (n for n in names if n in shares):
        table.rows.append([name, *(_fmt(_mean(shares[name].get(t, [])), "acc") for t in tasks)])
    return table


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


def _png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (stable: no software stamp), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def to_pareto_png(lb: Leaderboard) -> bytes:
    """Mean accuracy (SOP, reasoning, mixed) against inference cost: the Pareto view. Stable bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in lb.pareto if p.get("time_ratio") is not None or p.get("forwards") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=100)
    for p in pts:
        x = p["time_ratio"] if p.get("time_ratio") is not None else float(p["forwards"])
        color = "tab:red" if p["fusion"] else ("tab:blue" if p.get("forwards") == 1 else "tab:orange")
        ax.errorbar([x], [p["mean_acc"]], yerr=[p.get("spread") or 0.0], fmt="o", color=color, capsize=3)
        ax.annotate(p["name"], (x, p["mean_acc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front, best = [], -1.0  # the Pareto frontier: no cheaper point is as accurate
    for p in sorted(pts, key=lambda p: (p["time_ratio"] if p.get("time_ratio") is not None else p["forwards"])):
        if p["mean_acc"] > best:
            front.append(p)
            best = p["mean_acc"]
    if len(front) > 1:
        ax.plot([p["time_ratio"] if p.get("time_ratio") is not None else p["forwards"] for p in front],
                [p["mean_acc"] for p in front], "--", color="grey", linewidth=0.8, label="Pareto frontier")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("inference cost: scoring time × foundation (1x models blue, 2x orange, trained fusions red)")
    ax.set_ylabel("mean accuracy (SOP, reasoning, mixed)")
    ax.set_ylim(0, 1.05)
    runs = f"{len(lb.sources)} runs: mean ± std" if len(lb.sources) > 1 else "1 run"
    ax.set_title(f"sopmoe: accuracy against cost ({runs})")
    return _png_bytes(fig)


def to_png(lb: Leaderboard) -> bytes:
    """Grouped bar chart of accuracy per family per model (error bars: the ± of the table). Stable bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(lb.chart)
    names = [row[0] for row in lb.summary.rows if any(row[0] in lb.chart[f] for f in fams)]
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 1.5 + 0.35 * len(fams) * len(names))), 4.5), dpi=100)
    width = 0.8 / max(1, len(names))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")  # one colour per model
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(fams))]
        ms = [lb.chart[f].get(name) for f in fams]
        ax.bar(xs, [m.value if m else 0.0 for m in ms], width, label=name, color=cmap(i % cmap.N),
               yerr=[(m.stderr or 0.0) if m else 0.0 for m in ms], capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(fams)), fams)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (lm-eval acc)")
    runs = f"{len(lb.sources)} runs: mean ± std" if len(lb.sources) > 1 else "1 run: ± stderr"
    ax.set_title(f"sopmoe: accuracy per family ({runs})")
    ax.legend(fontsize=8, ncols=min(len(names), 6) or 1, loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    return _png_bytes(fig)


def write_leaderboard(run_dirs: list[str | Path], out: str | Path, png: str | Path | None = None,
                      command: str | None = None, *, pareto: str | Path | None = None,
                      json_path: str | Path | None = None, readme: str | Path | None = None,
                      readme_section: str = "results") -> Leaderboard:
    """Build the leaderboard from the run folders and write the markdown (and the charts, the JSON the README is
    generated from, and the README's results section) atomically."""
    lb = build(run_dirs, command)
    write_outputs(lb, out, png, pareto=pareto, json_path=json_path, readme=readme, readme_section=readme_section)
    return lb


def write_outputs(lb: Leaderboard, out: str | Path, png: str | Path | None = None, *, pareto: str | Path | None = None,
                  json_path: str | Path | None = None, readme: str | Path | None = None,
                  readme_section: str = "results") -> None:
    write_atomic(Path(out), to_markdown(lb).encode("utf-8"))
    if png is not None:
        write_atomic(Path(png), to_png(lb))
    if pareto is not None:
        write_atomic(Path(pareto), to_pareto_png(lb))
    if json_path is not None:
        write_atomic(Path(json_path), (json.dumps(lb.to_json(), indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    if readme is not None:
        update_readme(Path(readme), lb, readme_section)


def print_rich(lb: Leaderboard, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = console or Console()
    for t in [*lb.families, lb.summary, *([lb.routing] if lb.routing else [])]:
        rt = RichTable(title=escape(t.title))
        for c, col in enumerate(t.columns):
            rt.add_column(escape(col), justify="right" if (t.align or [])[c:c + 1] == ["r"] else "left")
        for r, row in enumerate(t.rows):
            rt.add_row(*(f"[bold green]{escape(x)}[/]" if (r, c) in t.bold else escape(x) for c, x in enumerate(row)))
        console.print(rt)
    for n in lb.notes:
        console.print(f"[yellow]{escape(n)}[/]")
