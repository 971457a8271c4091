"""``sopmoe demo``: the main job on the embedded default (see :mod:`harness.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = ("the whole pipeline on the test bed: build it, train the routers, distil, merge, evaluate everything, "
        "write the leaderboard and chart, run the regression check")
EXAMPLES = ["sopmoe demo", "sopmoe demo --seeds 0 1 2 --out runs/demo3 --update-baseline"]
ORDER = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder (default: runs/demo)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="the committed results folder --update-baseline rewrites (default: results); without it the "
                   "leaderboard goes to OUT/results and nothing tracked changes")
    p.add_argument("--baseline", type=Path, default=Path("results/baseline.json"), help="regression baseline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="test-bed seeds; several: mean ± spread")
    p.add_argument("--size", choices=["ci", "full"], default="ci", help="test-bed size (default: ci)")
    p.add_argument("--preset", choices=["partial", "extreme"], default="partial",
                   help="test-bed preset (default: partial forgetting; extreme = the earlier 0/100 bed)")
    p.add_argument("--readme", type=Path, default=Path("README.md"),
                   help="README whose results section --update-baseline regenerates (default: README.md)")
    p.add_argument("--limit", type=int, default=None, help="examples per task in the evaluation (default: all)")
    p.add_argument("--reuse-testbed", action="store_true",
                   help="keep a test bed already built in OUT for the same seed and preset instead of rebuilding it")
    p.add_argument("--update-baseline", action="store_true",
                   help="rewrite the committed results (leaderboard, charts, baseline of the first seed, README section)")


def run(args: argparse.Namespace) -> int:
    from harness.cli import setup_logging
    from harness.demo import Demo

    setup_logging(args.log_level, "logs/demo.log", keep=True)
    demo = Demo(out=args.out, results=args.results, baseline=args.baseline, seeds=args.seeds, size=args.size,
                preset=args.preset, limit=args.limit, readme=args.readme if args.readme.is_file() else None,
                reuse_testbed=args.reuse_testbed)
    return demo.run(update_baseline=args.update_baseline)
