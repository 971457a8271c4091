"""``sopmoe demo``: the main job on the embedded default (see :mod:`harness.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = ("the whole pipeline on the test bed: build it, train the routers, distil, merge, evaluate everything, "
        "write the leaderboard and chart, run the regression check")
EXAMPLES = ["sopmoe demo", "sopmoe demo --seeds 0 1 2 --out runs/demo3"]
ORDER = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder (default: runs/demo)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="where LEADERBOARD.md and leaderboard.png go (default: results)")
    p.add_argument("--baseline", type=Path, default=Path("results/baseline.json"), help="regression baseline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="test-bed seeds; several: mean ± spread")
    p.add_argument("--size", choices=["ci", "full"], default="ci", help="test-bed size (default: ci)")
    p.add_argument("--limit", type=int, default=None, help="examples per task in the evaluation (default: all)")
    p.add_argument("--update-baseline", action="store_true", help="rewrite the baseline from this run")


def run(args: argparse.Namespace) -> int:
    from harness.cli import setup_logging
    from harness.demo import Demo

    setup_logging(args.log_level, "logs/demo.log", keep=True)
    demo = Demo(out=args.out, results=args.results, baseline=args.baseline, seeds=args.seeds, size=args.size,
                limit=args.limit)
    return demo.run(update_baseline=args.update_baseline)
