"""``sopmoe sft``: make an SFT expert from a foundation (issue 12): full fine-tune or LoRA merged into a folder.

Plain output-token cross-entropy on a JSONL of ``input``/``output`` rows (``--kinds`` keeps rows of those
``category`` values), AdamW with warm-up and a cosine schedule, then an ordinary model folder (safetensors in the foundation's dtype unless ``--save_dtype`` says otherwise,
the foundation's tokenizer, ``sft.json``). An existing folder is replaced only with ``--overwrite``, and only one
``sopmoe sft`` wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import finite_float
from sopmoe_models.console import new_console, new_progress

NAME = "sft"
HELP = "fine-tune a foundation on SOP data into an SFT expert folder (full or LoRA merged)"
EXAMPLES = ["sopmoe sft --foundation runs/real/foundation --data data/sop.jsonl --out models/sft --steps 40",
            "sopmoe sft --foundation F --data D --out models/sft-lora --lora --learning_rate 1e-3"]
ORDER = 18


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.sft import SFTSpec

    d = SFTSpec()
    p.add_argument("--data", type=Path, required=True, help="training JSONL (input, output[, category])")
    p.add_argument("--out", type=Path, required=True, help="output folder (an existing one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an SFT folder sopmoe sft wrote")
    p.add_argument("--kinds", nargs="+", default=None, help="keep only rows of these categories (default: all)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--learning_rate", type=finite_float, default=d.learning_rate)
    p.add_argument("--weight_decay", type=finite_float, default=d.weight_decay)
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--max_length", type=int, default=d.max_length, help="tokens per row (prompt cut from the left)")
    p.add_argument("--prompt_format", choices=["raw", "chat"], default=d.prompt_format)
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (all linear layers) and merge it")
    p.add_argument("--lora_r", type=int, default=d.lora_r)
    p.add_argument("--lora_alpha", type=int, default=d.lora_alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save_dtype", choices=["auto", "float32", "bfloat16", "float16"], default=d.save_dtype,
                   help="dtype of the saved weights (default auto: the foundation's; training is float32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from harness.cli import setup_logging
    from sopmoe_models.errors import UserError
    from sopmoe_models.experts import check_model_dir
    from sopmoe_models.outputs import has_content, overlaps, refuse_existing, written_by
    from training.sft import SFTSpec, train_sft
    from training.testbed import free_cores

    foundation = getattr(args, "models.foundation.path", None)
    if foundation is None:  # --foundation (a flag every command has) or models.foundation.path of the config
        from harness.cli import config_from_args

        foundation = config_from_args(args).models.foundation.path
    args.foundation = Path(check_model_dir(foundation, "foundation"))
    if not args.data.is_file():
        raise UserError(f"--data {args.data}: no such file")
    for flag in ("steps", "batch_size", "max_length", "lora_r"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1")
    if overlaps(args.out, [args.foundation]):
        raise UserError(f"--out {args.out} overlaps --foundation {args.foundation}: choose another folder")
    if has_content(args.out):
        if not args.overwrite:
            refuse_existing(args.out, "a model folder")
        if not written_by(args.out, "sft"):
            raise UserError(f"--out {args.out} was not written by sopmoe sft; --overwrite only replaces those")
    setup_logging(args.log_level, "logs/sft.log")
    torch.set_num_threads(args.threads or free_cores())
    spec = SFTSpec(steps=args.steps, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                   batch_size=args.batch_size, max_length=args.max_length, prompt_format=args.prompt_format,
                   lora=args.lora, lora_r=args.lora_r, lora_alpha=args.lora_alpha, seed=args.seed,
                   save_dtype=args.save_dtype)
    with new_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=new_console(stderr=True)) as progress:
        card = train_sft(args.foundation, args.data, args.out, spec, kinds=args.kinds, progress=progress)
    new_console().print(f"sft: {card['rows']} rows, {spec.steps} steps, final loss {card['training']['final_loss']}, "
                        f"{card['wall_s']:.0f} s -> {args.out}")
    return 0
