"""``sopmoe evaluate``: the whole model zoo through lm-eval, one results folder per model (the seed's evaluate.py)."""

from __future__ import annotations

import argparse
import shlex

from sopmoe_models.console import new_console

NAME = "evaluate"
HELP = "run lm-eval on the sopmoe tasks for each model and keep its results, config, timings and costs"
EXAMPLES = [
    "sopmoe evaluate --config configs/config.yaml --models foundation sft ensemble btm distill merge "
    "--btm_router models/checkpoints/btm/best_router.safetensors --output_dir results/runs/NAME",
    "sopmoe evaluate --models foundation sft ensemble ensemble@0.7 ties=merge:method=ties,density=0.3 --limit 20",
]
ORDER = 80


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", dest="evaluation.models", default=None, metavar="SPEC",
                   help="foundation | sft | ensemble | btm | distill | merge | ensemble@W | LABEL=KIND:key=value,... "
                        "(KIND: a built-in kind or any lm-eval model; default: evaluation.models)")
    p.add_argument("--tasks", nargs="+", dest="evaluation.tasks", default=None, metavar="TASK",
                   help="lm-eval tasks (default: evaluation.tasks; e.g. sopmoe_ll, sopmoe_gen, sop_strict_gen)")
    p.add_argument("--limit", type=int, dest="evaluation.limit", default=None, metavar="N", help="examples per task (default: all)")
    p.add_argument("--batch_size", type=int, dest="evaluation.batch_size", default=None, metavar="N")
    p.add_argument("--output_dir", dest="evaluation.output_dir", default=None, metavar="DIR", help="run folder (results/runs/NAME)")
    p.add_argument("--btm_router", default=None, metavar="PATH",
                   help="router checkpoint for `btm` (default: distill.btm_router, else btm.output_dir/best_router.safetensors)")
    p.add_argument("--distill_model", default=None, metavar="DIR",
                   help="student folder for `distill` (default: distill.output_dir/best_student)")
    p.add_argument("--device", default=None, help="cpu | cuda:0 ... (default: models.foundation.device)")
    p.add_argument("--log_samples", action="store_true", help="also write per-example records to MODEL/samples/")
    p.add_argument("--append", action="store_true",
                   help="add these models to an existing run folder (same tasks and limit), keeping its others")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder (refused without --append or this flag)")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="allow trust_remote_code=true in --models specs of lm-eval's own models (hf): it runs Python "
                        "code shipped with the model; refused without this flag")
    p.add_argument("--allow_missing_fingerprint", action="store_true",
                   help="run btm routers whose router.json records no expert fingerprint (unverified)")
    p.add_argument("--log-file", default="logs/evaluate.log", help="log file (default: logs/evaluate.log)")


def run(args: argparse.Namespace) -> int:
    import logging

    from rich.table import Table

    from harness.cli import config_from_args, escape
    from harness.evaluate import evaluate_models

    cfg = config_from_args(args)
    fh = logging.FileHandler(_mkparent(args.log_file), encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(fh)
    if args.log_level != "DEBUG":
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    try:
        summary = evaluate_models(cfg, btm_router=args.btm_router, distill_model=args.distill_model,
                                  device=args.device, log_samples=args.log_samples, append=args.append,
                                  overwrite=args.overwrite, allow_remote_code=args.trust_remote_code,
                                  allow_missing_fingerprint=args.allow_missing_fingerprint, command=_command(args))
    finally:
        logging.getLogger().removeHandler(fh)
        fh.close()
    table = Table(title=escape(f"sopmoe evaluate -> {cfg.evaluation.output_dir}"))
    for col in ("model", "lm-eval model", "status", "wall s / reason"):
        table.add_column(col)
    for m in summary["models"]:
        colour = {"ran": "green", "skipped": "yellow", "failed": "red"}[m["status"]]
        detail = f"{m['wall_s']:.1f}" if m["status"] == "ran" else m.get("reason", "")
        table.add_row(escape(m["name"]), escape(m["lm_eval_model"]), f"[{colour}]{m['status']}[/]", escape(detail))
    new_console().print(table)
    print(f"ran: {' '.join(summary['ran']) or '-'}; skipped: {' '.join(summary['skipped']) or '-'}; "
          f"failed: {' '.join(summary['failed']) or '-'}")
    return 1 if set(summary["failed"]) & set(summary["evaluated"]) else 0


def _mkparent(path: str) -> str:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def _command(args: argparse.Namespace) -> str:
    """The command line as given (from the parsed flags, so it is right when called as ``main([...])`` too)."""
    v = vars(args)
    parts = ["sopmoe", "evaluate"] + (["--config", str(args.config)] if args.config else [])
    for flag, dest in (("--foundation", "models.foundation.path"), ("--sft", "models.sft.path"),
                       ("--models", "evaluation.models"), ("--tasks", "evaluation.tasks"),
                       ("--limit", "evaluation.limit"), ("--batch_size", "evaluation.batch_size"),
                       ("--output_dir", "evaluation.output_dir"), ("--btm_router", "btm_router"),
                       ("--distill_model", "distill_model"), ("--device", "device")):
        value = v.get(dest)
        if value is not None:
            parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    flags = [f for f, on in (("--log_samples", args.log_samples), ("--append", args.append),
                             ("--overwrite", args.overwrite), ("--trust_remote_code", args.trust_remote_code),
                             ("--allow_missing_fingerprint", args.allow_missing_fingerprint)) if on]
    return shlex.join(parts + flags)
