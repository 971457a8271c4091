"""What ``sopmoe testbed`` and ``sopmoe realbed`` share: claiming the output folder, running the build under a
progress bar, and the summary table of the bed's ``testbed.json`` (:class:`~sopmoe_models.cards.BedCard`).

Both builders write the same layout and the same card, so a folder one of them built is rebuilt only with
``--overwrite`` and only when sopmoe built it (its marker or ``testbed.json`` says so): rebuilding replaces the
experts, and every router trained beside them stops loading.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sopmoe_models.cards import BedCard
from sopmoe_models.console import new_console, new_progress


def add_bed_arguments(p: argparse.ArgumentParser, *, bed: str, seeds: str, sizes: dict[str, str]) -> None:
    """The flags both bed commands take: ``--out``, ``--overwrite``, ``--seed``, ``--size`` (``sizes``: name ->
    help, the first is the default) and ``--threads``; ``bed`` names the bed ("test bed"), ``seeds`` what the seed
    drives."""
    p.add_argument("--out", type=Path, required=True, help="output folder (an existing one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=f"rebuild a {bed} sopmoe built in --out")
    p.add_argument("--seed", type=int, default=0, help=f"seed of {seeds}")
    p.add_argument("--size", choices=list(sizes), default=next(iter(sizes)),
                   help=" or ".join(f"{k} ({v})" for k, v in sizes.items()))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")


def claim_bed_folder(out: Path, *, overwrite: bool, marker: str, seed: int, what: str, noun: str) -> None:
    """Make ``out`` the bed's folder: refuse a folder with content unless ``overwrite`` and sopmoe built a bed there
    (its ``marker`` or a ``testbed.json``); then write the command's marker. ``what`` names the bed the command
    builds ("a real bed"), ``noun`` the beds it may replace ("a bed")."""
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import has_content, refuse_existing, write_marker, written_by

    if has_content(out):
        if not overwrite:
            refuse_existing(out, f"{what} (or other files)")
        if not (written_by(out, marker) or (out / BedCard.FILE).is_file()):
            raise UserError(f"--out {out} is not {noun} sopmoe built (no {BedCard.FILE}); --overwrite only "
                            "rebuilds one: choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, marker, seed=seed)


def build_bed(command: str, out: Path, build: Callable[[Any], dict[str, Any]], error: type[Exception],
              columns: Sequence[Any]) -> tuple[BedCard, bool]:
    """(the bed's card, whether its properties hold): ``build(progress)`` under a rich progress bar of ``columns``
    on stderr. A failed property check (``error``, raised after the card is written) is printed in one line and the
    card is read back from ``out``."""

    from harness.cli import escape

    console = new_console(stderr=True)
    try:
        with new_progress(*columns, console=console) as progress:
            return BedCard.from_dict(build(progress)), True
    except error as e:
        console.print(f"[bold red]sopmoe {command}: property check FAILED[/]: {escape(e)}")
        return BedCard.read(out / BedCard.FILE), False


def print_bed_summary(console, card: BedCard, out: Path, kind: str = "test bed") -> None:
    """The bed's dev sweep (accuracy per family and mixture weight), its property check and its build time;
    ``kind`` names the bed in the title ("test bed", "real bed")."""
    from rich.table import Table

    from harness.cli import escape

    sweep = card.sweep
    labels = list(next(iter(sweep.values())))
    table = Table(title=escape(f"{kind} {out}") + f" (seed {card.seed}, {card.preset}, {card.size}): "
                        "accuracy on dev")
    table.add_column("family")
    for label in labels:
        table.add_column(label.replace("mix_", "w_f="), justify="right")
    for fam, points in sweep.items():
        table.add_row(fam, *(f"{points[k]['acc']:.2f}" for k in labels))
    console.print(table)
    props = Table(title="properties")
    for col in ("property", "value", "margin", "ok"):
        props.add_column(col)
    for p in card.properties:
        props.add_row(p["property"], f"{p['value']:.3f}", f"{p['margin']:+.3f}",
                      "[green]yes[/]" if p["passed"] else "[red]NO[/]")
    console.print(props)
    t = card.times["total"]
    console.print(f"built in {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU, {card.threads} threads")
