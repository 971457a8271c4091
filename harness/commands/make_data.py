"""``sopmoe make-data`` (the seed's create_sample_data): write the generator's train / dev / test data for one seed."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "make-data"
HELP = "generate the four families' train/dev/test JSONL (and the experts' corpora) from a seed"
EXAMPLES = ["sopmoe make-data --out data --seed 0"]
ORDER = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: data)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--design", choices=["partial", "extreme"], default="partial",
                   help="partial (default; several phrasings, the format partly in the foundation's corpus) or extreme")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from training.datagen import DataSpec, make_data

    paths = make_data(args.out, args.seed, DataSpec(design=args.design))
    table = Table(title=f"sopmoe make-data --seed {args.seed}")
    table.add_column("file")
    table.add_column("examples", justify="right")
    for _, path in sorted(paths.items()):
        with path.open(encoding="utf-8") as f:
            table.add_row(str(path), str(sum(1 for _ in f)))
    Console().print(table)
    return 0
