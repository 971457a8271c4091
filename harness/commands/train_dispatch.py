"""``sopmoe train-dispatch``: the per-request ``dispatch`` baseline (issue 11) — a classifier on the prompt sends the
whole request to one expert (1x per token). Fitted on ``data.train_file`` (the kinds ``data.train_kinds`` allows),
its L2 strength chosen on ``data.eval_file`` (dev). Writes ``<output_dir>/dispatch.safetensors`` + ``dispatch.json``;
evaluate it with ``lm_eval --model sopmoe_dispatch --model_args classifier=DIR`` or ``sopmoe evaluate --models
dispatch=dispatch:classifier=DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sopmoe_models.console import new_console

NAME = "train-dispatch"
HELP = "fit the per-request dispatch baseline (a prompt classifier that sends each request to one expert)"
EXAMPLES = ["sopmoe train-dispatch --config configs/config.yaml --output_dir models/checkpoints/dispatch"]
ORDER = 41


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", required=True, help="folder for dispatch.safetensors and dispatch.json")
    p.add_argument("--train_file", dest="data.train_file", help="overrides data.train_file")
    p.add_argument("--eval_file", dest="data.eval_file", help="dev JSONL for the choice of L2 (overrides data.eval_file)")
    p.add_argument("--batch_size", type=int, default=32, help="requests per forward (default 32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dispatch classifier already in --output_dir (refused without it)")


def guard(out: Path, overwrite: bool, cfg) -> None:
    """Never replace a trained classifier unasked, never write into another folder's files or into an expert."""
    from sopmoe_models.dispatch import CARD
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import MARKER, has_content, overlaps, written_by

    if overlaps(out, [p for p in (cfg.models.foundation.path, cfg.models.sft.path) if p]):
        raise UserError(f"--output_dir {out} is or contains an expert folder; choose another folder")
    if not has_content(out):
        return
    if (out / CARD).is_file() and not overwrite:
        raise UserError(f"--output_dir {out} already holds a dispatch classifier; pass --overwrite to replace it")
    others = [p.name for p in out.iterdir() if p.name not in {CARD, "dispatch.safetensors", MARKER}] if out.is_dir() else [out.name]
    if others and not written_by(out, "train-dispatch"):
        raise UserError(f"--output_dir {out} holds other files ({', '.join(sorted(others)[:3])}); choose an empty folder")


def run(args: argparse.Namespace) -> int:
    from harness.cli import config_from_args, setup_logging
    from sopmoe_models.factory import load_pair
    from training.dispatch_trainer import train_dispatch

    setup_logging(args.log_level, "logs/dispatch.log")
    if args.batch_size <= 0:
        raise ValueError(f"--batch_size must be > 0, got {args.batch_size}")
    cfg = config_from_args(args)
    guard(Path(args.output_dir), args.overwrite, cfg)
    card = train_dispatch(cfg, load_pair(cfg), args.output_dir, batch_size=args.batch_size)
    from sopmoe_models.outputs import write_marker

    write_marker(args.output_dir, "train-dispatch")
    m, t = card["metrics"], card["training"]
    new_console().print(f"dispatch classifier -> {args.output_dir}: L2 {t['chosen_l2']:g} (dev), dev agreement with the "
                        f"better expert {m['dev_agreement']:.3f}, dev routed NLL {m['dev_routed_nll']:.4f} "
                        f"(oracle {m['dev_oracle_nll']:.4f}), sft share in training {t['sft_share_train']:.2f}, "
                        f"{card['train_seconds']:.1f} s")
    return 0
