"""``sopmoe check`` (the seed's config_loader.py): is this config usable?

Validates the config, that both model folders exist and load, that their tokenizers are identical, and that every
data file parses. Prints a rich table; exits 1 with a one-line reason naming the first problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

NAME = "check"
HELP = "validate the config, the two model folders (and their tokenizers) and every data file"
EXAMPLES = ["sopmoe check --config configs/config.yaml", "sopmoe check --foundation DIR --sft DIR --no-load"]
ORDER = 10

FAMILIES = ("sop_strict", "reasoning", "mixed", "eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-load", action="store_true", help="check tokenizers and configs only, skip loading weights")


def _checks(cfg, load_weights: bool) -> list[tuple[str, Callable[[], str]]]:
    from sopmoe_models.data import load_jsonl
    from sopmoe_models.experts import check_model_dir, check_same_tokenizer, load_experts, load_tokenizer

    m = cfg.models
    checks: list[tuple[str, Callable[[], str]]] = []
    for role in ("foundation", "sft"):
        path = getattr(m, role).path

        def model_dir(role=role, path=path) -> str:
            if not path:
                raise ValueError(f"models.{role}.path is not set (config or --{role})")
            return str(check_model_dir(path, role))

        checks.append((f"{role} folder", model_dir))

    def tokenizers() -> str:
        tok = load_tokenizer(m.foundation.path)
        check_same_tokenizer(tok, load_tokenizer(m.sft.path))
        return f"identical, {len(tok)} tokens"

    checks.append(("tokenizers", tokenizers))
    if load_weights:

        def weights() -> str:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the table is the output; no loading bars on stderr
            pair = load_experts(m.foundation.path, m.sft.path, dtype=m.foundation.dtype, device="cpu")
            n = sum(p.numel() for p in pair.foundation.parameters())
            return f"{type(pair.foundation).__name__}, {n / 1e6:.2f}M parameters each, {pair.vocab_size} tokens, {pair.width} output rows"

        checks.append(("weights load", weights))

    files = [("data.train_file", cfg.data.train_file), ("data.eval_file", cfg.data.eval_file)]
    if cfg.data.task_data_dir:
        files += [(f"task data {f}", str(Path(cfg.data.task_data_dir) / f"{f}.jsonl")) for f in FAMILIES]
    for label, path in files:
        if path is None:
            continue

        def data(path=path) -> str:
            return f"{len(load_jsonl(path))} examples in {path}"

        checks.append((label, data))
    return checks


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.cli import config_from_args

    cfg = config_from_args(args)  # a bad key or value raises ConfigError naming it (exit 2)
    table = Table(title="sopmoe check")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    first_error = None
    for label, fn in _checks(cfg, load_weights=not args.no_load):
        if label in ("tokenizers", "weights load") and first_error and "folder" in first_error.split(":")[0]:
            table.add_row(label, "[yellow]skipped[/]", "a model folder is missing")
            continue
        try:
            detail, ok = fn(), True
        except Exception as e:  # every failure becomes a row; the first one is the exit reason
            detail, ok = str(e).splitlines()[0] if str(e) else type(e).__name__, False
            first_error = first_error or f"{label}: {detail}"
        table.add_row(label, "[green]ok[/]" if ok else "[red]FAIL[/]", detail)
    console = Console()
    console.print(table)
    if first_error:
        print(f"sopmoe check: error: {first_error}", file=sys.stderr)
        return 1
    console.print("[green]all checks passed[/]")
    return 0
