"""``sopmoe make-data`` (the seed's create_sample_data): write the generator's train / dev / test data for one seed.

An existing data folder is never replaced silently: ``--overwrite`` is needed, and even then only a folder that
make-data wrote (its ``.sopmoe.json`` marker says so, or it holds nothing but make-data's own files) is rewritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sopmoe_models.console import new_console

NAME = "make-data"
HELP = "generate the four families' train/dev/test JSONL (and the experts' corpora) from a seed"
EXAMPLES = ["sopmoe make-data --out data --seed 0", "sopmoe make-data --out data --seed 1 --overwrite"]
ORDER = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: data)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--design", choices=["partial", "extreme"], default="partial",
                   help="partial (default; several phrasings, the format partly in the foundation's corpus) or extreme")
    p.add_argument("--overwrite", action="store_true",
                   help="rewrite an existing data folder written by make-data (refused without it)")


def own_files() -> set[str]:
    """The files make-data writes, relative to its folder."""
    from training.datagen import FAMILIES

    return {"train/train.jsonl", "dev/dev.jsonl", "experts/foundation.jsonl", "experts/sft.jsonl",
            *(f"{part}/{f}.jsonl" for part in ("dev", "test") for f in FAMILIES)}


def guard(out: Path, overwrite: bool) -> None:
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import MARKER, has_content, refuse_existing, written_by

    if not has_content(out):
        return
    if not overwrite:
        refuse_existing(out, "a data folder")
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a data folder; choose another path")
    others = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                    and str(p.relative_to(out)) not in own_files() | {MARKER})
    if others and not written_by(out, "make-data"):
        raise UserError(f"--out {out} holds files make-data did not write ({', '.join(others[:3])}); --overwrite "
                        "only rewrites a data folder make-data wrote: choose another folder")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.cli import escape
    from sopmoe_models.outputs import write_marker
    from training.datagen import DataSpec, make_data

    guard(args.out, args.overwrite)
    paths = make_data(args.out, args.seed, DataSpec(design=args.design))
    write_marker(args.out, "make-data", seed=args.seed, design=args.design)
    table = Table(title=f"sopmoe make-data --seed {args.seed}")
    table.add_column("file")
    table.add_column("examples", justify="right")
    for _, path in sorted(paths.items()):
        with path.open(encoding="utf-8") as f:
            table.add_row(escape(path), str(sum(1 for _ in f)))
    new_console().print(table)
    return 0
