"""``sopmoe regress``: exit 1 when a metric of the current run moved past its tolerance, either way (see
:mod:`harness.regress`): the wrong way is a regression; the good way fails too unless ``--allow-improvement``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from sopmoe_models.console import new_console

NAME = "regress"
HELP = ("compare a run with the committed baseline per (model, task, metric), both ways; exit 1 and name each cell "
        "that moved beyond its tolerance")
EXAMPLES = [
    "sopmoe regress --baseline results/baseline.json --current results/runs/NAME",
    "sopmoe regress --baseline results/baseline.json --current results/runs/NAME --tolerance acc=0.05,perplexity=0.05",
    "sopmoe regress --baseline results/baseline.json --current results/runs/NAME --update",
]
ORDER = 86


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", type=Path, default=Path("results/baseline.json"), help="baseline JSON")
    p.add_argument("--current", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folder(s) from `sopmoe evaluate` (several: compared by their mean)")
    p.add_argument("--tolerance", default=None,
                   help="METRIC=TOL,... (perplexity-like: nats/token on ln(perplexity); acc, exact_match, format_ok: "
                        "absolute; *: the rest). Default: the baseline's, else 0.05 each")
    p.add_argument("--allow-missing", action="store_true", help="a baseline model/task absent from the run is not a failure")
    p.add_argument("--allow-improvement", action="store_true",
                   help="a move beyond tolerance in the good direction is reported but not a failure")
    p.add_argument("--update", action="store_true", help="rewrite the baseline from the current run (exit 0)")
    p.add_argument("--all", action="store_true", help="list every comparison, not only the ones that moved")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.cli import escape
    from harness.regress import regress

    result = regress(args.baseline, args.current, tolerance=args.tolerance, update=args.update,
                     allow_missing=args.allow_missing, allow_improvement=args.allow_improvement,
                     command=_command(args))
    for note in result.notes:
        print(f"note: {note}")
    shown = [f for f in result.findings if args.all or f.status != "ok"]
    if shown:
        colours = {"ok": "green", "improved": "yellow" if result.allow_improvement else "bold magenta", "new": "blue",
                   "missing": "red", "regressed": "bold red"}
        table = Table(title=escape(f"sopmoe regress: {', '.join(map(str, args.current))} vs {args.baseline}"))
        for col in ("model", "task", "metric", "baseline", "current", "allowed", "status"):
            table.add_column(col, justify="right" if col in ("baseline", "current", "allowed") else "left")
        for f in shown:
            allowed = "–" if f.low is None else f"{f.low:.4f}..{f.high:.4f}"
            table.add_row(escape(f.model), escape(f.task), escape(f.metric), _num(f.baseline), _num(f.current),
                          allowed, f"[{colours[f.status]}]{f.status}[/]")
        new_console(stderr=True).print(table)
    for f in result.findings:
        if f.status != "ok" and (f.status != "new" or args.all):
            print(f.line())
    n_ok = sum(f.status == "ok" for f in result.findings)
    n_better = sum(f.status == "improved" for f in result.findings)
    if result.updated:
        print(f"updated {args.baseline} from {', '.join(map(str, args.current))}")
        return 0
    if result.failed:
        n_bad = sum(f.status == "regressed" for f in result.failed)
        n_imp = sum(f.status == "improved" for f in result.failed)
        n_missing = sum(f.status == "missing" for f in result.failed)
        print(f"FAILED: {n_bad} regression(s) beyond tolerance, {n_imp} improvement(s) beyond tolerance "
              f"(--allow-improvement to accept, --update to record), {n_missing} missing from the run "
              f"(--allow-missing to accept), {n_ok} comparison(s) ok")
        return 1
    extra = f", {n_better} improvement(s) beyond tolerance allowed" if n_better else ""
    print(f"ok: {n_ok} comparison(s) within tolerance of {args.baseline}{extra}")
    return 0


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _command(args: argparse.Namespace) -> str:
    parts = ["sopmoe", "regress", "--baseline", str(args.baseline), "--current", *map(str, args.current)]
    if args.tolerance:
        parts += ["--tolerance", args.tolerance]
    return shlex.join(parts + (["--update"] if args.update else []))
