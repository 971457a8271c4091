"""``sopmoe leaderboard``: the markdown leaderboard and its charts from ``sopmoe evaluate`` run folders.

``--json`` also writes every rendered number (``results/leaderboard.json``); ``--readme`` regenerates the README's
results section from it, so the README's numbers come from committed result files and are never typed.
``--from-json`` renders from such a JSON instead of run folders (the committed results, without the runs).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

NAME = "leaderboard"
HELP = "write results/LEADERBOARD.md (per-family, summary, interval tables), charts and JSON from run folders"
EXAMPLES = [
    "sopmoe leaderboard results/runs/NAME --out results/LEADERBOARD.md --png results/leaderboard.png",
    "sopmoe leaderboard runs/seed0 runs/seed1 runs/seed2 --out results/LEADERBOARD.md  # mean ± spread, intervals",
    "sopmoe leaderboard --from-json results/leaderboard.json --out /tmp/LB.md --readme README.md",
]
ORDER = 85


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR", help="folders written by `sopmoe evaluate`")
    p.add_argument("--from-json", type=Path, default=None, help="render a leaderboard JSON instead of run folders")
    p.add_argument("--out", type=Path, default=Path("results/LEADERBOARD.md"), help="markdown file to write")
    p.add_argument("--png", type=Path, default=None, help="also write the accuracy chart (e.g. results/leaderboard.png)")
    p.add_argument("--pareto", type=Path, default=None, help="also write accuracy against cost (results/pareto.png)")
    p.add_argument("--json", type=Path, default=None, help="also write every rendered number (results/leaderboard.json)")
    p.add_argument("--readme", type=Path, default=None, help="regenerate this README's results section")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")


def run(args: argparse.Namespace) -> int:
    import json

    from harness.leaderboard import Leaderboard, build, print_rich, write_outputs

    if bool(args.run_dirs) == bool(args.from_json):
        raise ValueError("give run folders (RUN_DIR ...) or --from-json FILE, not both and not neither")
    if args.from_json:
        try:
            lb = Leaderboard.from_json(json.loads(args.from_json.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"--from-json {args.from_json}: not a readable leaderboard JSON ({e})") from None
    else:
        parts = ["sopmoe", "leaderboard", *map(str, args.run_dirs), "--out", str(args.out)]
        for flag in ("png", "pareto", "json"):
            if getattr(args, flag):
                parts += [f"--{flag}", str(getattr(args, flag))]
        lb = build(args.run_dirs, command=shlex.join(parts))
    write_outputs(lb, args.out, args.png, pareto=args.pareto, json_path=args.json, readme=args.readme)
    if not args.quiet:
        print_rich(lb)
    written = [str(x) for x in (args.out, args.png, args.pareto, args.json, args.readme) if x]
    print("wrote " + ", ".join(written))
    return 0
