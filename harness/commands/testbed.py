"""``sopmoe testbed``: build the tiny foundation/SFT pair and check that fusion measurably matters (issue 3).

An existing folder is rebuilt only with ``--overwrite``, and only when it is a test bed sopmoe built (its marker or
``testbed.json`` says so): rebuilding replaces the experts, and every router trained beside them stops loading.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sopmoe_models.console import new_console

NAME = "testbed"
HELP = "build the test bed (data, tokenizer, foundation, sft, config.yaml) and check its properties"
EXAMPLES = ["sopmoe testbed --out tb --seed 0", "sopmoe testbed --out /tmp/tb --size ci"]
ORDER = 15


def add_arguments(p: argparse.ArgumentParser) -> None:
    from harness.beds import add_bed_arguments

    add_bed_arguments(p, bed="test bed", seeds="the data, the initialisation and the batches",
                      sizes={"full": "<= 8 min", "ci": "today the same: smaller builds lose the `mixed` property"})
    p.add_argument("--preset", choices=["partial", "extreme"], default="partial",
                   help="partial (default: partial forgetting, several phrasings) or extreme (the earlier 0/100 bed)")
    p.add_argument("--log-file", default="logs/testbed.log", help="log file (default: logs/testbed.log)")


def run(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.beds import build_bed, claim_bed_folder, print_bed_summary
    from training.testbed import PropertyError, build_testbed

    claim_bed_folder(args.out, overwrite=args.overwrite, marker="testbed", seed=args.seed, what="a test bed",
                     noun="a test bed")
    Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(args.log_file, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(fh)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        card, ok = build_bed("testbed", args.out, lambda progress: build_testbed(
            args.out, args.seed, args.preset, threads=args.threads, size_name=args.size, progress=progress),
            PropertyError, columns)
    finally:
        logging.getLogger().removeHandler(fh)
        fh.close()
    print_bed_summary(new_console(), card, args.out)
    return 0 if ok else 1
