"""The ``sopmoe`` command line: discovers ``harness.commands.*`` and dispatches to them."""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from harness import commands

log = logging.getLogger("sopmoe")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``sopmoe X: error: ... (see sopmoe X --help)``, exit 2) instead of the usage
    block: a user mistake is one line that names the flag."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """argparse ``type=`` for every float flag: a finite number (``nan``, ``inf`` are refused, naming the flag)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number (NaN and infinity are refused)")
    return value


def escape(text: object) -> str:
    """``str(text)`` safe to print through rich (a prompt, id or path holding ``[/x]`` is not markup)."""
    from rich.markup import escape as _escape

    return _escape(str(text))


def discover_commands() -> list[ModuleType]:
    mods = [importlib.import_module(f"{commands.__name__}.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus the model-path overrides every subcommand accepts."""
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/config.yaml if present)")
    parser.add_argument("--foundation", dest="models.foundation.path", default=None, help="foundation model folder")
    parser.add_argument("--sft", dest="models.sft.path", default=None, help="SFT model folder")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def config_from_args(args: argparse.Namespace):
    """Load the YAML named by ``--config`` and apply every dotted-dest flag that was given."""
    from sopmoe_models.config import load_config

    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    return load_config(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    mods = discover_commands()
    epilog = "examples:\n" + "\n".join(f"  {ex}" for m in mods for ex in getattr(m, "EXAMPLES", []))
    parser = Parser(
        prog="sopmoe",
        description="Fuse a foundation LLM with its SFT fine-tune and measure which fusion wins.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for m in mods:
        p = sub.add_parser(
            m.NAME,
            help=m.HELP,
            description=m.HELP,
            epilog="examples:\n" + "\n".join(f"  {ex}" for ex in getattr(m, "EXAMPLES", [])),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common_arguments(p)
        m.add_arguments(p)
        p.set_defaults(_run=m.run)
    return parser


def setup_logging(level: str, log_file: str | None = None, *, keep: bool = False) -> None:
    """Console logging (once per process: nested in-process commands, as the demo runs them, keep the outer set-up;
    rich on a terminal, plain lines in a file or pipe: :func:`sopmoe_models.console.log_handler`) plus the command's
    log file. A command's file replaces the previous command's (so stages run one after another in one process each
    log to their own file); ``keep=True`` marks an outer file (the demo's) that stays."""
    from sopmoe_models.console import log_handler

    root = logging.getLogger()
    if not any(getattr(h, "_sopmoe_console_log", False) for h in root.handlers):
        handler = log_handler()
        handler._sopmoe_console_log = True  # type: ignore[attr-defined]
        logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_file:
        for h in [h for h in root.handlers if getattr(h, "_sopmoe_command_log", False)]:
            root.removeHandler(h)
            h.close()
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._sopmoe_command_log = not keep  # type: ignore[attr-defined]
        root.addHandler(fh)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    setup_logging(args.log_level)

    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
            FileExistsError) as e:
        # User errors (UserError, ConfigError, DataError, ExpertMismatchError are ValueErrors): one line naming the
        # file, key or flag and what to do; no traceback.
        message = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"sopmoe {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sopmoe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
