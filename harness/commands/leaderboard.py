"""``sopmoe leaderboard``: the markdown leaderboard and its chart from ``sopmoe evaluate`` run folders."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

NAME = "leaderboard"
HELP = "write results/LEADERBOARD.md (per-family and summary tables) and a PNG chart from run folders"
EXAMPLES = [
    "sopmoe leaderboard results/runs/NAME --out results/LEADERBOARD.md --png results/leaderboard.png",
    "sopmoe leaderboard runs/seed0 runs/seed1 runs/seed2 --out results/LEADERBOARD.md  # mean ± spread",
]
ORDER = 85


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="folders written by `sopmoe evaluate`")
    p.add_argument("--out", type=Path, default=Path("results/LEADERBOARD.md"), help="markdown file to write")
    p.add_argument("--png", type=Path, default=None, help="also write the accuracy chart (e.g. results/leaderboard.png)")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")


def run(args: argparse.Namespace) -> int:
    from harness.leaderboard import print_rich, write_leaderboard

    parts = ["sopmoe", "leaderboard", *map(str, args.run_dirs), "--out", str(args.out)]
    if args.png:
        parts += ["--png", str(args.png)]
    lb = write_leaderboard(args.run_dirs, args.out, args.png, command=shlex.join(parts))
    if not args.quiet:
        print_rich(lb)
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    return 0
