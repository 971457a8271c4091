"""``sopmoe demo``: the main job on the embedded default (see :mod:`harness.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = ("the whole pipeline on the test bed: build it, train the routers, distil, merge, evaluate everything, "
        "write the leaderboard and chart, run the regression check")
EXAMPLES = ["sopmoe demo", "sopmoe demo --seeds 0 1 2 --out runs/demo3 --update-baseline",
            "sopmoe demo --bed real --size full --out runs/real  # SmolLM2-135M-Instruct and its SOP fine-tune"]
ORDER = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bed", choices=["test", "real"], default="test",
                   help="test (default: the tiny bed trained here in minutes) or real (SmolLM2-135M-Instruct and its "
                   "own SOP fine-tune; --size full is the committed run, ~45 min on 2 cores)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: runs/demo, runs/real for --bed real)")
    p.add_argument("--results", type=Path, default=None,
                   help="the committed results folder --update-baseline rewrites (default: results, results/real for "
                   "--bed real); without it the leaderboard goes to OUT/results and nothing tracked changes")
    p.add_argument("--baseline", type=Path, default=None,
                   help="regression baseline (default: RESULTS/baseline.json)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="test-bed seeds; several: mean ± spread")
    p.add_argument("--size", choices=["ci", "full"], default=None,
                   help="bed size (default: ci for the test bed, full for the real bed, whose ci size is a smoke of "
                   "the same code path at tiny sizes, with no regression baseline)")
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
    real = args.bed == "real"
    out = args.out or Path("runs/real" if real else "runs/demo")
    results = args.results or Path("results/real" if real else "results")
    demo = Demo(out=out, results=results, baseline=args.baseline or results / "baseline.json", seeds=args.seeds,
                size=args.size or ("full" if real else "ci"), preset=args.preset, limit=args.limit,
                readme=args.readme if args.readme.is_file() else None, reuse_testbed=args.reuse_testbed, bed=args.bed)
    return demo.run(update_baseline=args.update_baseline)
