"""``sopmoe testbed``: build the tiny foundation/SFT pair and check that fusion measurably matters (issue 3).

An existing folder is rebuilt only with ``--overwrite``, and only when it is a test bed sopmoe built (its marker or
``testbed.json`` says so): rebuilding replaces the experts, and every router trained beside them stops loading.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "testbed"
HELP = "build the test bed (data, tokenizer, foundation, sft, config.yaml) and check its properties"
EXAMPLES = ["sopmoe testbed --out tb --seed 0", "sopmoe testbed --out /tmp/tb --size ci"]
ORDER = 15


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (an existing one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing test bed in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initialisation and the batches")
    p.add_argument("--preset", choices=["partial", "extreme"], default="partial",
                   help="partial (default: partial forgetting, several phrasings) or extreme (the earlier 0/100 bed)")
    p.add_argument("--size", choices=["ci", "full"], default="full",
                   help="full (<= 8 min) or ci (today the same: smaller builds lose the `mixed` property)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    p.add_argument("--log-file", default="logs/testbed.log", help="log file (default: logs/testbed.log)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.cli import escape
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import has_content, refuse_existing, write_marker, written_by
    from training.testbed import PropertyError, build_testbed

    if has_content(args.out):
        if not args.overwrite:
            refuse_existing(args.out, "a test bed (or other files)")
        if not (written_by(args.out, "testbed") or (args.out / "testbed.json").is_file()):
            raise UserError(f"--out {args.out} is not a test bed sopmoe built (no testbed.json); --overwrite only "
                            "rebuilds one: choose another folder")
    args.out.mkdir(parents=True, exist_ok=True)
    write_marker(args.out, "testbed", seed=args.seed)
    Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(args.log_file, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(fh)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            record = build_testbed(args.out, args.seed, args.preset, threads=args.threads, size_name=args.size,
                                       progress=progress)
        ok = True
    except PropertyError as e:
        console.print(f"[bold red]sopmoe testbed: property check FAILED[/]: {escape(e)}")
        import json

        record, ok = json.loads((args.out / "testbed.json").read_text(encoding="utf-8")), False
    finally:
        logging.getLogger().removeHandler(fh)
        fh.close()
    _print_summary(Console(), record, args)
    return 0 if ok else 1


def _print_summary(console, record: dict, args: argparse.Namespace) -> None:
    from rich.table import Table

    from harness.cli import escape

    sweep = record["sweep"]
    labels = list(next(iter(sweep.values())))
    table = Table(title=escape(f"test bed {args.out}") + f" (seed {record['seed']}, {record.get('preset')}, "
                        f"{record['size']}): accuracy on dev")
    table.add_column("family")
    for label in labels:
        table.add_column(label.replace("mix_", "w_f="), justify="right")
    for fam, points in sweep.items():
        table.add_row(fam, *(f"{points[k]['acc']:.2f}" for k in labels))
    console.print(table)
    props = Table(title="properties")
    for col in ("property", "value", "margin", "ok"):
        props.add_column(col)
    for p in record["properties"]:
        props.add_row(p["property"], f"{p['value']:.3f}", f"{p['margin']:+.3f}", "[green]yes[/]" if p["passed"] else "[red]NO[/]")
    console.print(props)
    t = record["times"]["total"]
    console.print(f"built in {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU, {record['threads']} threads")
