"""``sopmoe regress``: exit 1 when a metric of the current run moved the wrong way past its tolerance."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

NAME = "regress"
HELP = "compare a run with the committed baseline per (model, task, metric); exit 1 and name each regression"
EXAMPLES = [
    "sopmoe regress --baseline results/baseline.json --current results/runs/NAME",
    "sopmoe regress --baseline results/baseline.json --current results/runs/NAME --tolerance acc=0.05,perplexity=0.10",
    "sopmoe regress --baseline results/baseline.json --current results/runs/NAME --update",
]
ORDER = 86


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", type=Path, default=Path("results/baseline.json"), help="baseline JSON")
    p.add_argument("--current", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folder(s) from `sopmoe evaluate` (several: compared by their mean)")
    p.add_argument("--tolerance", default=None,
                   help="METRIC=TOL,... (perplexity: relative; acc, exact_match, format_ok: absolute; *: the rest). "
                        "Default: the baseline's, else acc=0.05,exact_match=0.05,format_ok=0.05,perplexity=0.10")
    p.add_argument("--allow-missing", action="store_true", help="a baseline model/task absent from the run is not a failure")
    p.add_argument("--update", action="store_true", help="rewrite the baseline from the current run (exit 0)")
    p.add_argument("--all", action="store_true", help="list every comparison, not only the ones that moved")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.regress import regress

    result = regress(args.baseline, args.current, tolerance=args.tolerance, update=args.update,
                     allow_missing=args.allow_missing, command=_command(args))
    shown = [f for f in result.findings if args.all or f.status != "ok"]
    if shown:
        colours = {"ok": "green", "improved": "cyan", "new": "blue", "missing": "red", "regressed": "bold red"}
        table = Table(title=f"sopmoe regress: {', '.join(map(str, args.current))} vs {args.baseline}")
        for col in ("model", "task", "metric", "baseline", "current", "limit", "status"):
            table.add_column(col, justify="right" if col in ("baseline", "current", "limit") else "left")
        for f in shown:
            table.add_row(f.model, f.task, f.metric, _num(f.baseline), _num(f.current), _num(f.limit),
                          f"[{colours[f.status]}]{f.status}[/]")
        Console(stderr=True).print(table)
    for f in result.findings:
        if f.status != "ok" and (f.status != "new" or args.all):
            print(f.line())
    n_ok = sum(f.status in ("ok", "improved") for f in result.findings)
    if result.updated:
        print(f"updated {args.baseline} from {', '.join(map(str, args.current))}")
        return 0
    if result.failed:
        n_bad = sum(f.status == "regressed" for f in result.failed)
        n_missing = len(result.failed) - n_bad
        print(f"FAILED: {n_bad} regression(s) beyond tolerance, {n_missing} missing from the run "
              f"(--allow-missing to accept), {n_ok} comparison(s) ok")
        return 1
    print(f"ok: {n_ok} comparison(s) within tolerance of {args.baseline}")
    return 0


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _command(args: argparse.Namespace) -> str:
    parts = ["sopmoe", "regress", "--baseline", str(args.baseline), "--current", *map(str, args.current)]
    if args.tolerance:
        parts += ["--tolerance", args.tolerance]
    return shlex.join(parts + (["--update"] if args.update else []))
