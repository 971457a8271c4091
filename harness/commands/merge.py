"""``sopmoe merge``: merge foundation and sft in weight space and save a plain HF folder (1x-cost baselines).

Methods (:mod:`sopmoe_models.merges`): ``linear`` (WiSE-FT, ``--weight`` α: 0 = foundation, 1 = sft),
``task_arithmetic`` (``--scale`` λ on sft − foundation), ``ties`` and ``dare`` (``--scale``, ``--density``; DARE also
``--seed``). ``--auto`` picks the method's parameters on a few dev examples (LM-Cocktail weights and a small grid
search, :mod:`sopmoe_models.merges.auto`; parameters given as flags stay fixed) and prints the table it searched.

The folder (``save_pretrained`` safetensors, config, tokenizer) is written to a hidden temporary sibling and renamed
into place, with ``merge.json`` (method, parameters, input fingerprints, versions, the search when ``--auto``),
``sopmoe_config.yaml`` (the resolved config, merge section = the parameters used) and the marker ``.sopmoe.json``.
Evaluate it with ``lm_eval --model hf --model_args pretrained=DIR`` or merge in memory with ``--model sopmoe_merge``.

``--out DIR --overwrite`` replaces DIR only when ``sopmoe merge`` wrote it (its marker, or the ``merge.json`` of a
merge written before markers); a DIR that is or contains an input (an expert, the dev file, the config) is refused
whatever the flags. The folder being replaced is renamed aside under a unique name and deleted once the new one is in
place, so no other folder (``DIR.old``, ``DIR.tmp``) is ever touched.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

from harness.cli import finite_float
from sopmoe_models.console import new_console, new_progress

NAME = "merge"
HELP = "merge foundation and sft in weight space (linear, task_arithmetic, ties, dare) into a plain HF folder"
EXAMPLES = [
    "sopmoe merge --config configs/config.yaml --method ties --density 0.5 --out models/merged/ties",
    "sopmoe merge --foundation F --sft S --method linear --weight 0.3 --out merged",
    "sopmoe merge --config configs/config.yaml --method dare --auto --dev_file data/dev.jsonl --out merged/dare",
]
ORDER = 50

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", dest="merge.method", choices=["linear", "task_arithmetic", "ties", "dare"],
                   help="merge method (default: merge.method)")
    p.add_argument("--out", dest="merge.output_dir", help="output folder (default: merge.output_dir)")
    p.add_argument("--weight", dest="merge.weight", type=finite_float, help="linear α in [0, 1]: 0 = foundation, 1 = sft")
    p.add_argument("--scale", dest="merge.scale", type=finite_float, help="λ on the task vector sft − foundation")
    p.add_argument("--density", dest="merge.density", type=finite_float, help="fraction of the task vector kept (ties/dare)")
    p.add_argument("--seed", dest="merge.seed", type=int, help="seed of DARE's drop masks and of the dev sample")
    p.add_argument("--auto", action="store_true",
                   help="choose the method's parameters on dev data (LM-Cocktail + grid); flags given stay fixed")
    p.add_argument("--dev_file", type=Path, default=None, help="dev JSONL for --auto (default: data.eval_file)")
    p.add_argument("--dev_examples", type=int, default=32, help="dev examples used by --auto (seeded sample)")
    p.add_argument("--grid", action="append", default=None, metavar="NAME=V1,V2,...",
                   help="values of one searched parameter (--auto; repeatable), e.g. --grid density=0.2,0.5")
    p.add_argument("--temperature", type=finite_float, default=5.0, help="LM-Cocktail temperature T (--auto)")
    p.add_argument("--batch_size", type=int, default=16, help="dev scoring batch size (--auto)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists and sopmoe merge wrote it (never an input or any other folder)")
    p.add_argument("--log-file", default="logs/merge.log", help="log file (default: logs/merge.log)")


def search_grid(method_module, given: dict[str, Any], grid_args: list[str] | None) -> dict[str, list[float]]:
    """The --auto grid: the method's ``SEARCH`` without the parameters given on the command line, then ``--grid``."""
    grid = {k: list(v) for k, v in method_module.SEARCH.items() if given.get(k) is None}
    for item in grid_args or []:
        name, _, values = item.partition("=")
        if name not in method_module.PARAMETERS or name == "seed":
            searchable = [k for k in method_module.PARAMETERS if k != "seed"]
            raise ValueError(f"--grid {item!r}: {name!r} is not a searchable parameter of this method ({searchable})")
        try:
            grid[name] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--grid {item!r}: expected NAME=numbers, e.g. density=0.2,0.5") from None
        if not grid[name]:
            raise ValueError(f"--grid {item!r}: no values")
        if not all(math.isfinite(v) for v in grid[name]):
            raise ValueError(f"--grid {item!r}: every value must be a finite number (NaN and infinity are refused)")
    if not grid:
        raise ValueError(f"--auto has nothing to search: every parameter of the method is given ({given})")
    return grid


def dev_examples(path: str | Path | None, n: int, seed: int) -> tuple[list, list[int]]:
    """A seeded sample of ``n`` examples of ``path`` (all of them when it has fewer) and their 0-based indices."""
    from sopmoe_models.data import load_jsonl

    if path is None:
        raise ValueError("--auto needs dev data: set data.eval_file in the config or pass --dev_file")
    if n <= 0:
        raise ValueError(f"--dev_examples {n} must be > 0")
    examples = load_jsonl(path)
    idx = sorted(random.Random(seed).sample(range(len(examples)), n)) if len(examples) > n else list(range(len(examples)))
    return [examples[i] for i in idx], idx


def _print_search(result, method: str) -> None:
    from rich.table import Table

    best, names = result.best, list(result.rows[0].params.used())
    table = Table(title=f"sopmoe merge --auto: {method}; * = searched; dev loss = per-token NLL of the outputs")
    for col in ("source", *(f"{k}*" if k in result.grid else k for k in names), "dev loss", "dev ppl", "dev acc", ""):
        table.add_column(col, justify="left" if col in ("source", "") else "right")
    c = result.cocktail
    for name in ("foundation", "sft"):
        loss = c["dev_loss"][name]
        table.add_row(name, *[""] * len(names), f"{loss:.4f}", f"{math.exp(loss):.3f}", f"{c['dev_acc'][name]:.3f}",
                      f"cocktail w={c['weights'][name]:.3f}")
    for row in result.rows:
        used = row.params.used()
        table.add_row(row.source, *(f"{used[k]:.4g}" for k in names), f"{row.score.loss:.4f}",
                      f"{row.score.perplexity:.4g}", f"{row.score.acc:.3f}",
                      "[bold green]chosen[/]" if row is best else "")
    new_console(width=max(new_console().width, 100)).print(table)


def is_merge_output(folder: Path) -> bool:
    """Whether ``sopmoe merge`` wrote ``folder``: its marker says so, or (written before markers) its ``merge.json``
    is a merge record."""
    from sopmoe_models.outputs import read_marker, written_by

    if written_by(folder, NAME):
        return True
    from sopmoe_models.cards import MergeCard

    if read_marker(folder) is not None or not (folder / MergeCard.FILE).is_file():
        return False
    return MergeCard.is_merge_record(folder / MergeCard.FILE)


def guard_out(out: Path, overwrite: bool, inputs: list) -> None:
    """Refuse an --out that is or contains an input (always), an existing one without --overwrite, and with it any
    folder merge did not write."""
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import has_content, overlaps

    hit = overlaps(out, inputs)
    if hit:
        raise UserError(f"--out {out} is or contains an input of this merge ({hit[0]}); choose another --out")
    if not has_content(out):
        return
    if not overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it (only a folder sopmoe merge "
                        "wrote), or choose another --out")
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"--out {out} is not a folder; --overwrite only replaces a folder sopmoe merge wrote")
    if not is_merge_output(out):
        raise UserError(f"--out {out} was not written by sopmoe merge (no .sopmoe.json marker or merge.json); "
                        "--overwrite never deletes other folders: choose another --out")


def save_merged(model, tokenizer, out: Path, record: dict[str, Any], cfg) -> None:
    """Write the HF folder, ``merge.json``, ``sopmoe_config.yaml`` and the marker to a temporary sibling, then rename
    it to ``out``."""
    from sopmoe_models.cards import MergeCard
    from sopmoe_models.outputs import new_temp_dir, replace_dir, write_marker

    card = MergeCard.new(**record)
    tmp = new_temp_dir(out)
    try:
        model.save_pretrained(tmp)  # safetensors (transformers 5 default), config.json, generation_config.json
        tokenizer.save_pretrained(tmp)
        card.write(tmp / MergeCard.FILE)
        cfg.save(tmp / "sopmoe_config.yaml")
        write_marker(tmp, NAME, method=record.get("method"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def run(args: argparse.Namespace) -> int:
    import peft
    import torch
    import transformers

    import sopmoe_models
    from harness.cli import config_from_args
    from sopmoe_models.factory import load_pair
    from sopmoe_models.merges import METHODS, PEFT_FUNCTIONS, MergeParams, merge_models

    cfg = config_from_args(args)
    m = cfg.merge
    params = MergeParams(m.method, m.weight, m.scale, m.density, m.seed)
    out = Path(m.output_dir).expanduser()
    dev_file = (args.dev_file or cfg.data.eval_file) if args.auto else None
    guard_out(out, args.overwrite, [cfg.models.foundation.path, cfg.models.sft.path, dev_file, args.config])
    given = {k: getattr(args, f"merge.{k}") for k in params.module.PARAMETERS}
    grid = search_grid(params.module, given, args.grid) if args.auto else {}
    examples, dev_idx = dev_examples(args.dev_file or cfg.data.eval_file, args.dev_examples, m.seed) if args.auto \
        else ([], [])

    Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(args.log_file, encoding="utf-8")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log_file)
    try:
        pair = load_pair(cfg)
        fingerprints = pair.fingerprints()
        search, t0 = None, time.perf_counter()
        if args.auto:
            from sopmoe_models.merges.auto import auto_merge

            n = math.prod(len(v) for v in grid.values()) + 1
            with new_progress(transient=True) as progress:
                task = progress.add_task(f"--auto: {params.method} on {len(examples)} dev examples", total=n)
                model, search = auto_merge(pair, params, examples, grid=grid, temperature=args.temperature,
                                           style=cfg.data.prompt_format, batch_size=args.batch_size,
                                           on_row=lambda row: progress.advance(task))
            _print_search(search, params.method)
            params = search.best.params
        else:
            model = merge_models(pair, **vars(params), inplace=True)
        wall = round(time.perf_counter() - t0, 3)
        record = {
            "method": params.method,
            "parameters": params.used(),
            "reference": METHODS[params.method].REFERENCE_URL,
            "tensor_maths": PEFT_FUNCTIONS[params.method],
            "inputs": {
                "foundation": {"path": str(Path(pair.foundation_path).resolve()),
                               "fingerprint": fingerprints["foundation"]},
                "sft": {"path": str(Path(pair.sft_path).resolve()), "fingerprint": fingerprints["sft"]},
            },
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "wall_time_s": wall,  # the merge (and --auto search), loading and saving excluded
            "auto": None if search is None else {
                "dev_file": str(Path(args.dev_file or cfg.data.eval_file).resolve()), "dev_indices": dev_idx,
                **search.to_json(),
            },
            "versions": {"sopmoe": sopmoe_models.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__},
        }
        resolved = cfg.model_copy(update={"merge": m.model_copy(update={**params.used(), "method": params.method})})
        save_merged(model, pair.tokenizer, out, record, resolved)
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    used = ", ".join(f"{k}={v:g}" for k, v in params.used().items())
    print(f"merged ({params.method}: {used}) -> {out}")
    return 0

