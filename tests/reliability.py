"""Helpers of the reliability tests (tests/test_reliability_*.py): run the CLI in-process and read its one-line error,
write a config for the tiny pair, save an (untrained) router beside it."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``sopmoe ARGV`` run in-process."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv, contains: str | tuple[str, ...] = ()) -> str:
    """Run ``sopmoe ARGV``; assert exit code 2 and exactly one stderr line (no traceback) holding ``contains``."""
    rc, _, err = cli(capsys, *argv)
    # transformers' own weight-loading progress bars (tqdm, on stderr) are not part of the error
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in (contains,) if isinstance(contains, str) else contains:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def write_config(path: Path, pair_dirs, data_dir: Path, **sections) -> Path:
    """A YAML config for the tiny pair on CPU with the tiny data; ``sections`` are merged in (``btm={...}``)."""
    f, s = pair_dirs
    doc = {
        "models": {"foundation": {"path": str(f), "device": "cpu"}, "sft": {"path": str(s), "device": "cpu"}},
        "data": {"train_file": str(data_dir / "train" / "train.jsonl"),
                 "eval_file": str(data_dir / "eval" / "eval_all.jsonl")},
        "btm": {"router_hidden_size": 8, "batch_size": 3, "num_epochs": 1},
        "distill": {"num_epochs": 1, "batch_size": 2, "save_steps": 2},
    }
    for key, value in sections.items():
        _merge(doc.setdefault(key, {}), value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def save_router(pair, folder: Path, router_type: str = "token_level") -> Path:
    """An untrained router of ``router_type`` saved with its card beside ``pair``; returns the weights file."""
    from sopmoe_models.routers import build_router

    kwargs = {"hidden_size": 8} if router_type != "posterior" else {}
    return build_router(router_type, pair, **kwargs).save_router(folder)
