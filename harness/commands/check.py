"""``sopmoe check`` (the seed's config_loader.py): is this config usable?

Validates the config, that both model folders exist, hold a tokenizer and load, that their tokenizers are identical,
that the configured devices exist on this machine, that every weight is a finite number, that every data file parses,
and that the router checkpoint the config names (:func:`sopmoe_models.factory.configured_router`: ``distill.btm_router``,
else ``<btm.output_dir>/best_router.safetensors`` when present) is readable, finite and was trained beside these experts. Prints a rich table; exits 1 with a one-line
reason naming the first problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sopmoe_models.console import new_console
from sopmoe_models.data import FAMILIES

NAME = "check"
HELP = "validate the config, the two model folders (and their tokenizers) and every data file"
EXAMPLES = ["sopmoe check --config configs/config.yaml", "sopmoe check --foundation DIR --sft DIR --no-load"]
ORDER = 10


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

    def devices() -> str:
        from sopmoe_models.experts import resolve_device

        placed = {role: str(resolve_device(getattr(m, role).device)) for role in ("foundation", "sft")}
        return f"foundation on {placed['foundation']}, sft on {placed['sft']}"

    checks.append(("devices", devices))
    if load_weights:

        def weights() -> str:
            from transformers.utils import logging as hf_logging

            from sopmoe_models.experts import nonfinite_parameters

            hf_logging.disable_progress_bar()  # the table is the output; no loading bars on stderr
            pair = load_experts(m.foundation.path, m.sft.path, dtype=m.foundation.dtype, device="cpu")
            for role, model in zip(pair.names, pair.experts):
                bad = nonfinite_parameters(model)
                if bad:
                    raise ValueError(f"the {role} weights hold NaN or infinity ({', '.join(bad)}) in "
                                     f"{getattr(pair, role + '_path')}: the checkpoint is damaged or diverged")
            n = sum(p.numel() for p in pair.foundation.parameters())
            return (f"{type(pair.foundation).__name__}, {n / 1e6:.2f}M parameters each, all finite, "
                    f"{pair.vocab_size} tokens, {pair.width} output rows")

        checks.append(("weights load", weights))

    from sopmoe_models.factory import configured_router

    router = configured_router(cfg)
    if router:

        def router_check(router=router) -> str:
            from sopmoe_models.experts import fingerprint
            from sopmoe_models.routers.base import (
                check_fingerprints,
                read_card,
                read_router_weights,
                resolve_checkpoint,
            )

            weights, _ = resolve_checkpoint(router)
            card = read_card(router)
            read_router_weights(weights, card)

            class Paths:  # the experts by path only: fingerprints need no loaded weights
                foundation_path, sft_path = m.foundation.path, m.sft.path

                def fingerprints(self):
                    return {"foundation": fingerprint(self.foundation_path), "sft": fingerprint(self.sft_path)}

            check_fingerprints(card, Paths(), str(weights))
            return f"{card['type']} router {weights}: readable, finite, trained beside these experts"

        checks.append(("router", router_check))

    files = [("data.train_file", cfg.data.train_file), ("data.eval_file", cfg.data.eval_file)]
    if cfg.data.dev_dir:
        files += [(f"dev data {f}", str(Path(cfg.data.dev_dir) / f"{f}.jsonl")) for f in FAMILIES]
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
    from rich.table import Table

    from harness.cli import config_from_args, escape

    cfg = config_from_args(args)  # a bad key or value raises ConfigError naming it (exit 2)
    table = Table(title="sopmoe check")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    first_error = None
    for label, fn in _checks(cfg, load_weights=not args.no_load):
        if label in ("tokenizers", "weights load", "router") and first_error and "folder" in first_error.split(":")[0]:
            table.add_row(label, "[yellow]skipped[/]", "a model folder is missing")
            continue
        try:
            detail, ok = fn(), True
        except Exception as e:  # every failure becomes a row; the first one is the exit reason
            detail, ok = str(e).splitlines()[0] if str(e) else type(e).__name__, False
            first_error = first_error or f"{label}: {detail}"
        table.add_row(escape(label), "[green]ok[/]" if ok else "[red]FAIL[/]", escape(detail))
    console = new_console()
    console.print(table)
    if first_error:
        print(f"sopmoe check: error: {first_error}", file=sys.stderr)
        return 1
    console.print("[green]all checks passed[/]")
    return 0
