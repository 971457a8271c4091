"""``sopmoe train-router`` (the seed's BTM step 2): train a router over the two frozen experts.

Reads the ``btm`` section (router_type, num_epochs, batch_size, gradient_accumulation_steps, learning_rate,
load_balance_weight, sparsity_weight, ...) and ``data.train_file`` / ``data.eval_file``; every flag below overrides
its config key. Writes ``<output_dir>/best_router.safetensors`` + ``router.json`` (best eval epoch), ``last/``
(for ``--resume``), ``config.yaml`` (resolved), ``logs/btm_training.log`` and TensorBoard scalars under
``outputs/tensorboard/<run>``. ``--router_type posterior`` only estimates and saves the prior.

A folder that already holds a trained router is refused unless ``--resume`` (continue it; only a better epoch
replaces its best checkpoint) or ``--overwrite`` (discard it).
"""

from __future__ import annotations

import argparse
import json

from harness.cli import finite_float
from sopmoe_models.console import new_console

NAME = "train-router"
HELP = "train a BTM router (posterior | token_level | layer_level) over the frozen foundation and sft experts"
EXAMPLES = [
    "sopmoe train-router --config configs/config.yaml --output_dir models/checkpoints/btm",
    "sopmoe train-router --config configs/config.yaml --router_type token_level --num_epochs 2 --resume",
]
ORDER = 40

FLAGS = [  # (flag, config key, type, help)
    ("--router_type", "btm.router_type", str, "posterior | token_level | layer_level (or a registered router)"),
    ("--output_dir", "btm.output_dir", str, "checkpoint folder (default btm.output_dir)"),
    ("--num_epochs", "btm.num_epochs", int, None),
    ("--batch_size", "btm.batch_size", int, None),
    ("--gradient_accumulation_steps", "btm.gradient_accumulation_steps", int, None),
    ("--learning_rate", "btm.learning_rate", finite_float, None),
    ("--weight_decay", "btm.weight_decay", finite_float, None),
    ("--warmup_ratio", "btm.warmup_ratio", finite_float, None),
    ("--load_balance_weight", "btm.load_balance_weight", finite_float, None),
    ("--sparsity_weight", "btm.sparsity_weight", finite_float, None),
    ("--router_hidden_size", "btm.router_hidden_size", int, None),
    ("--max_train_examples", "btm.max_train_examples", int, "a seeded random subset of data.train_file"),
    ("--seed", "btm.seed", int, None),
    ("--train_file", "data.train_file", str, None),
    ("--eval_file", "data.eval_file", str, "held-out JSONL for the per-epoch eval loss"),
    ("--max_length", "data.max_length", int, None),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    for flag, dest, typ, help_ in FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, metavar=flag.lstrip("-").upper(),
                       help=help_ or f"overrides {dest}")
    p.add_argument("--bf16", dest="btm.bf16", action="store_const", const=True, default=None,
                   help="autocast router steps to bfloat16 (GPU)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <output_dir>/last (same settings and data; only a better epoch replaces the best)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the trained router already in --output_dir (refused without --resume or this flag)")
    p.add_argument("--max_steps", type=int, default=None, help="stop (and save last/) after this many optimizer steps")
    p.add_argument("--save_steps", type=int, default=50, help="also save last/ every this many optimizer steps")
    p.add_argument("--run_name", default=None, help="TensorBoard run name (default btm_<type>_<time>)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.cli import config_from_args, escape, setup_logging
    from training.router_trainer import TrainingDiverged, train_router

    setup_logging(args.log_level, "logs/btm_training.log")
    cfg = config_from_args(args)
    if args.max_steps is not None and args.max_steps <= 0:
        raise ValueError(f"--max_steps must be > 0, got {args.max_steps}")
    if args.save_steps <= 0:
        raise ValueError(f"--save_steps must be > 0, got {args.save_steps}")
    try:
        result = train_router(cfg, resume=args.resume, overwrite=args.overwrite, max_steps=args.max_steps,
                              save_steps=args.save_steps,
                              run_name=args.run_name, progress=not args.no_progress)
    except TrainingDiverged as e:
        new_console(stderr=True).print(f"[red]sopmoe train-router: {escape(e)}[/red]")
        return 1
    table = Table(title=f"router {result['router_type']} ({result['status']})")
    table.add_column("epoch")
    table.add_column("step")
    table.add_column("eval nll")
    table.add_column("gate foundation / sft")
    for h in result["history"]:
        table.add_row(str(h.get("epoch", "-")), str(h.get("step", "-")), f"{h['nll']:.4f}",
                      f"{h['gate_foundation']:.3f} / {h['gate_sft']:.3f}")
    console = new_console()
    console.print(table)
    console.print(escape(f"best: {result['best']} (epoch {result['best_epoch']}), {result['train_seconds']:.1f}s"))
    console.print_json(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0
