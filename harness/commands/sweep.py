"""``sopmoe sweep``: the ensemble's accuracy and per-token perplexity per task family versus the foundation weight.

For each mix (``prob``: log(w p_f + (1−w) p_s), ``logit``: log_softmax(w z_f + (1−w) z_s)) and each foundation weight
w (sft weight 1−w), the sopmoe loglikelihood tasks are scored by lm-eval in-process through the same adapter as
``lm_eval --model sopmoe_ensemble`` (:class:`sopmoe_models.adapters.ensemble.EnsembleLMEval`). The experts are loaded
once and every point wraps them in a new :class:`~sopmoe_models.ensemble.CachedEnsembleLM`: each expert's log-probs
for a batch are computed at the first point and only re-mixed at the others (``--cache_gb`` bounds that memory; 0
runs every point from scratch with a plain :class:`~sopmoe_models.ensemble.EnsembleLM`). w = 0 and w = 1 are single
experts whatever the mix, so they are scored once. Writes ``sweep.json`` (every point: acc, its standard error,
per-token perplexity, seconds), ``sweep.png`` (accuracy vs w, a line per family and mix) and ``config.yaml``; an
existing sweep there is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from harness.cli import finite_float
from sopmoe_models.console import new_console, new_progress
from sopmoe_models.outputs import atomic_path, write_atomic

NAME = "sweep"
HELP = "score the ensemble across foundation weights on the sopmoe loglikelihood tasks (table, JSON, PNG)"
EXAMPLES = [
    "sopmoe sweep --weights 0,0.25,0.5,0.75,1 --mix both",
    "sopmoe sweep --config configs/config.yaml --weights 0,0.3,0.5,0.7,1 --mix prob --output_dir results/sweep",
]
ORDER = 35

log = logging.getLogger(__name__)
LL_TASKS = ("sop_strict", "reasoning", "mixed", "eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="foundation weights in [0, 1], comma separated")
    p.add_argument("--mix", choices=["prob", "logit", "both"], default=None, help="default: ensemble.mix")
    p.add_argument("--tasks", default=",".join(LL_TASKS), help="loglikelihood tasks (default: the four families)")
    p.add_argument("--output_dir", type=Path, default=Path("results/sweep"))
    p.add_argument("--data_dir", default=None,
                   help="task data folder (FAMILY.jsonl); default data.dev_dir (a weight is a choice: pick it on dev), "
                   "else data.task_data_dir")
    p.add_argument("--batch_size", dest="evaluation.batch_size", type=int, default=None)
    p.add_argument("--limit", dest="evaluation.limit", type=int, default=None, help="examples per task")
    p.add_argument("--cache_gb", type=finite_float, default=2.0,
                   help="memory for the experts' cached log-probs, reused across points (0 = recompute each point)")
    p.add_argument("--log-file", default="logs/sweep.log", help="log file (default: logs/sweep.log)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sweep in --output_dir")


def parse_weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"--weights {text!r}: expected comma-separated numbers such as 0,0.5,1") from None
    bad = [w for w in weights if not (0.0 <= w <= 1.0)]  # also catches NaN
    if not weights or bad:
        raise ValueError(f"--weights {text!r}: every foundation weight must be in [0, 1] (sft weight = 1 - w)")
    return sorted(set(weights))


def task_metrics(results: dict[str, Any], task: str) -> dict[str, float | int | None]:
    r = results["results"][task]
    stderr = r.get("acc_stderr,none")
    return {
        "acc": r["acc,none"],
        "acc_stderr": stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
        "perplexity": r["perplexity,none"],
        "n": results["n-samples"][task]["effective"],
    }


def sweep(pair, weights: list[float], mixes: list[str], tasks: list[str], *, metadata: dict[str, Any],
          batch_size: int, limit: int | None, cache_bytes: int = 0, on_point=None) -> list[dict[str, Any]]:
    """Score every (mix, weight) point through lm-eval on one loaded expert pair."""
    from sopmoe_models.lm_eval_plugin import register_all

    register_all()
    lm_eval_log = logging.getLogger("lm_eval")
    level = lm_eval_log.level
    if not log.isEnabledFor(logging.DEBUG):  # lm-eval's per-run chatter (task building, metadata hints) x every point
        lm_eval_log.setLevel(logging.ERROR)
    try:
        return _score_points(pair, weights, mixes, tasks, metadata, batch_size, limit, cache_bytes, on_point)
    finally:
        lm_eval_log.setLevel(level)


def _score_points(pair, weights, mixes, tasks, metadata, batch_size, limit, cache_bytes, on_point):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from sopmoe_models.adapters.ensemble import EnsembleLMEval
    from sopmoe_models.ensemble import CachedEnsembleLM, EnsembleLM, ExpertLogprobCache

    cache = ExpertLogprobCache(pair, cache_bytes) if cache_bytes > 0 else None

    from harness.evaluate import sopmoe_task_manager

    # built once for all points; only sopmoe's own task folder (lm-eval's ~15k built-in tasks cost seconds to index)
    task_manager = sopmoe_task_manager(TaskManager, list(tasks), metadata)
    points: list[dict[str, Any]] = []
    pure: dict[float, dict[str, Any]] = {}  # w in {0, 1}: one expert, the same for every mix
    for mix in mixes:
        for w in weights:
            if w in pure:
                points.append({**pure[w], "mix": mix, "reused": True})
                continue
            t0 = time.perf_counter()
            fused = CachedEnsembleLM(cache, w, 1.0 - w, mix) if cache else EnsembleLM(pair, w, 1.0 - w, mix)
            lm = EnsembleLMEval(fused=fused, batch_size=batch_size)
            res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit)
            point = {
                "mix": mix, "foundation_weight": w, "sft_weight": 1.0 - w,
                "seconds": round(time.perf_counter() - t0, 2),
                "results": {t: task_metrics(res, t) for t in tasks},
            }
            if w in (0.0, 1.0):
                pure[w] = point
            points.append(point)
            log.info("mix=%s w_f=%.2f: %s (%.1fs)", mix, w,
                     ", ".join(f"{t} acc {point['results'][t]['acc']:.3f}" for t in tasks), point["seconds"])
            if on_point is not None:
                on_point()
    if cache is not None:
        log.info("expert log-prob cache: %d batches computed, %d reused, %.1f MB", cache.misses, cache.hits,
                 cache.bytes / 2**20)
    return points


def print_table(points: list[dict[str, Any]], tasks: list[str]) -> None:
    from rich.table import Table

    table = Table(title="ensemble accuracy (per-token perplexity) vs foundation weight")
    table.add_column("mix")
    table.add_column("w_f", justify="right")
    for t in tasks:
        table.add_column(t, justify="right")
    mixes = list(dict.fromkeys(p["mix"] for p in points))
    for mix in mixes:
        rows = [p for p in points if p["mix"] == mix]
        best = {t: max(p["results"][t]["acc"] for p in rows) for t in tasks}
        for p in rows:
            cells = []
            for t in tasks:
                r = p["results"][t]
                cell = f"{r['acc']:.3f} ({r['perplexity']:.3g})"
                cells.append(f"[bold]{cell}[/bold]" if r["acc"] == best[t] else cell)
            table.add_row(mix, f"{p['foundation_weight']:.2f}", *cells)
        if mix != mixes[-1]:
            table.add_section()
    new_console().print(table)
    print("w_f = foundation weight (sft weight 1 - w_f); bold = best accuracy of that mix; 0 = sft alone, 1 = foundation alone")


def plot(points: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"prob": "-", "logit": "--"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, t in enumerate(tasks):
        for mix in dict.fromkeys(p["mix"] for p in points):
            rows = sorted((p for p in points if p["mix"] == mix), key=lambda p: p["foundation_weight"])
            ax.plot([p["foundation_weight"] for p in rows], [p["results"][t]["acc"] for p in rows],
                    styles.get(mix, ":"), marker="o", color=colors[i % len(colors)], label=f"{t} ({mix})")
    ax.set_xlabel("foundation weight (sft weight = 1 - w)")
    ax.set_ylabel("accuracy (target is the greedy continuation)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("sopmoe ensemble weight sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from transformers.utils import logging as hf_logging

    from harness.cli import config_from_args, setup_logging
    from sopmoe_models.factory import load_pair

    cfg = config_from_args(args)
    weights = parse_weights(args.weights)
    if not args.cache_gb >= 0:
        raise ValueError(f"--cache_gb must be >= 0, got {args.cache_gb}")
    mixes = ["prob", "logit"] if args.mix == "both" else [args.mix or cfg.ensemble.mix]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in LL_TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: {unknown or tasks} not among the loglikelihood tasks {', '.join(LL_TASKS)}")
    if not args.overwrite:
        from sopmoe_models.outputs import refuse_existing

        for name in ("sweep.json", "sweep.png", "config.yaml"):
            refuse_existing(args.output_dir / name, "a sweep result")
    setup_logging(args.log_level, args.log_file)
    hf_logging.disable_progress_bar()
    pair = load_pair(cfg)
    metadata: dict[str, Any] = {"tokenizer": pair.foundation_path, "prompt_format": cfg.data.prompt_format}
    data_dir = args.data_dir or cfg.data.dev_dir or cfg.data.task_data_dir
    if data_dir:
        metadata["data_dir"] = data_dir
    if not args.data_dir and not cfg.data.dev_dir:
        log.warning("data.dev_dir is not set: sweeping the scored task data; do not choose a weight from it")
    n_points = len(weights) * len(mixes) - sum(w in (0.0, 1.0) for w in weights) * (len(mixes) - 1)
    t0 = time.perf_counter()
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with new_progress(*columns) as progress:
        bar = progress.add_task("sweep", total=n_points)
        points = sweep(pair, weights, mixes, tasks, metadata=metadata, batch_size=cfg.evaluation.batch_size,
                       limit=cfg.evaluation.limit, cache_bytes=int(args.cache_gb * 2**30),
                       on_point=lambda: progress.advance(bar))
    seconds = round(time.perf_counter() - t0, 2)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "weights": weights, "mixes": mixes, "tasks": tasks, "seconds": seconds,
        "data_dir": metadata.get("data_dir"), "split": "dev" if data_dir and data_dir == cfg.data.dev_dir else "given",
        "limit": cfg.evaluation.limit, "cache_gb": args.cache_gb,
        "experts": {"foundation": pair.foundation_path, "sft": pair.sft_path, "fingerprints": pair.fingerprints()},
        "points": points,
    }
    write_atomic(out / "sweep.json", json.dumps(record, indent=2, ensure_ascii=False))
    plot(points, tasks, out / "sweep.png")
    cfg.save(out / "config.yaml")
    print_table(points, tasks)
    log.info("sweep: %d points scored in %.1fs; wrote %s", n_points, seconds, out / "sweep.json")
    return 0
