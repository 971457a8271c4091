"""``sopmoe generate`` (the seed's ``step1_ensemble/inference.py``): see what fusion does, at once.

``--prompt TEXT`` prints the chosen model's answer. ``--eval_file F --output_file O`` writes one JSON line per input
with the chosen model's answer *and each expert's* (``outputs``), exact match per model against the reference
(``exact_match``: stripped strings equal, as the lm-eval ``*_gen`` tasks score it), then prints where each expert
wins per category (the seed's "analyse each model's advantage scenarios"); ``O.summary.json`` holds the same table
and ``O.config.yaml`` the resolved config. Generation is batched (left padding, prompts sorted by length) and
KV-cached (:meth:`sopmoe_models.fused.FusedLM.generate`); models are built by the model factory, :func:`sopmoe_models.factory.build_fused_model`.

Nothing is replaced silently: an existing output (``O``, ``O.summary.json``, ``O.config.yaml``, ``--route_html``) needs
``--overwrite``, and an output that is the input file (``--eval_file``, the config) is refused whatever the flags.

``--draft PATH`` (or ``auto``: the distilled student ``<distill.output_dir>/best_student``) decodes the chosen model
speculatively (:mod:`sopmoe_models.speculative`): the drafter proposes ``--num_draft_tokens`` tokens per round, the
fused model verifies them in one forward per expert. Greedy answers are the same as without it; the drafter's
acceptance rate is printed after the answers (and the routing statistics of ``--show_router_stats``), and kept in
``O.summary.json`` under ``speculation``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from harness.cli import finite_float
from harness.models import model_names
from harness.router_view import RoutingView, btm_config
from sopmoe_models.console import new_console, new_progress

NAME = "generate"
HELP = "generate with foundation, sft or a fused model: one prompt, or a JSONL file with each expert's answer beside it"
EXAMPLES = [
    'sopmoe generate --model ensemble --prompt "请按照SOP流程处理客户退款申请" --foundation_weight 0.6',
    'sopmoe generate --model btm --prompt "请按照SOP流程处理客户退款申请" --draft auto --show_router_stats',
    "sopmoe generate --model ensemble --eval_file data/eval/eval_all.jsonl --output_file results/generations.jsonl",
]
ORDER = 30

log = logging.getLogger(__name__)
EXPERTS = ("foundation", "sft")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ensemble", choices=model_names(), help="which model answers (default: ensemble)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one input text (formatted with data.prompt_format); prints the answer")
    src.add_argument("--eval_file", dest="data.eval_file", help="JSONL {input, output[, id, category]} to answer")
    p.add_argument("--output_file", type=Path, help="JSONL written in --eval_file mode (default: results/generate/...)")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples of --eval_file")
    p.add_argument("--foundation_weight", dest="ensemble.foundation_weight", type=finite_float, default=None)
    p.add_argument("--sft_weight", dest="ensemble.sft_weight", type=finite_float, default=None)
    p.add_argument("--mix", dest="ensemble.mix", choices=["prob", "logit"], default=None)
    p.add_argument("--max_new_tokens", dest="generation.max_new_tokens", type=int, default=None)
    p.add_argument("--temperature", dest="generation.temperature", type=finite_float, default=None, help="0 = greedy")
    p.add_argument("--top_p", dest="generation.top_p", type=finite_float, default=None)
    p.add_argument("--seed", dest="generation.seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop", dest="generation.stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--batch_size", dest="generation.batch_size", type=int, default=None)
    p.add_argument("--prompt_format", dest="data.prompt_format", choices=["raw", "chat"], default=None)
    p.add_argument("--log-file", default="logs/generate.log", help="log file in --eval_file mode")
    p.add_argument("--router_checkpoint", default=None,
                   help="--model btm: router checkpoint (default: distill.btm_router, else "
                        "<btm.output_dir>/best_router.safetensors; see sopmoe_models/factory.py)")
    p.add_argument("--show_router_stats", action="store_true",
                   help="--model btm: per-query share of foundation vs sft (table; always in --output_file rows)")
    p.add_argument("--route_html", type=Path, default=None,
                   help="--model btm: write an HTML page colouring each generated token by its gate")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (refused without it)")
    p.add_argument("--allow_missing_fingerprint", action="store_true",
                   help="--model btm: run a router whose router.json records no expert fingerprint (unverified)")
    p.add_argument("--draft", dest="generation.draft", default=None,
                   help="speculative decoding with this drafter (a model folder sharing the experts' tokenizer), or "
                        "auto = <distill.output_dir>/best_student, or lookup (drafts copied from the prompt and "
                        "--draft_corpus, no model); same greedy output, fewer fused forwards")
    p.add_argument("--draft_corpus", dest="generation.draft_corpus", default=None,
                   help="--draft lookup: a JSONL (output/text fields) or text file to draft from besides the prompt, "
                        "e.g. the bed's data/train/train.jsonl")
    p.add_argument("--num_draft_tokens", dest="generation.num_draft_tokens", type=int, default=None,
                   help="draft tokens per round (default 8; the start value of the heuristic schedule)")
    p.add_argument("--draft_schedule", dest="generation.draft_schedule", choices=["constant", "heuristic"],
                   default=None, help="constant k, or heuristic (default): k + 2 after a fully accepted round, else k - 1")
    p.add_argument("--draft_confidence", dest="generation.draft_confidence", type=finite_float, default=None,
                   help="end a round's drafting once the drafter's probability of its draft is below this (default 0: off)")


def generate_texts(model, prompts: list[str], gen, *, batch_size: int = 1, on_batch=None, on_result=None,
                   draft=None) -> list[str]:
    """Answers for already formatted ``prompts``: sorted by length, left-padded batches, original order returned.

    ``on_result(indices, GenerationResult)`` (optional) sees each batch's result, e.g. a router's gates; ``draft``
    (a :class:`~sopmoe_models.speculative.Drafter`) decodes speculatively."""
    from sopmoe_models.data import collate

    tok = model.tokenizer
    max_pos = getattr(model.pair.foundation.config, "max_position_embeddings", None)
    max_ctx = max_pos - gen.max_new_tokens if max_pos else None
    if max_ctx is not None and max_ctx <= 0:
        raise ValueError(f"--max_new_tokens {gen.max_new_tokens} leaves no room for a prompt (model max {max_pos})")
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    encoded = [ids[-max_ctx:] if max_ctx else ids for ids in encoded]  # keep the end: the question and separator
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    texts: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([{"input_ids": encoded[i]} for i in idx], tok.pad_token_id, padding_side="left")
        result = model.generate(
            batch["input_ids"].to(model.device),
            batch["attention_mask"].to(model.device),
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            seed=gen.seed,
            stop=list(gen.stop),
            draft=draft,
        )
        for i, text in zip(idx, result.texts):
            texts[i] = text
        if on_result is not None:
            on_result(idx, result)
        if on_batch is not None:
            on_batch(len(idx))
    return texts


def exact_match(prediction: str, reference: str) -> int:
    return int(prediction.strip() == reference.strip())


def summarize(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per category (and ``all``): n, exact match per model, and who is right where the experts disagree."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["category"] or "(none)", []).append(row)
    out = []
    for cat, rs in [*sorted(groups.items()), ("all", rows)]:
        em = {n: [r["exact_match"][n] for r in rs] for n in names}
        f, s = em["foundation"], em["sft"]
        entry: dict[str, Any] = {
            "category": cat,
            "n": len(rs),
            "exact_match": {n: sum(v) / len(v) for n, v in em.items()},
            "foundation_only": sum(a and not b for a, b in zip(f, s)),
            "sft_only": sum(b and not a for a, b in zip(f, s)),
            "both": sum(a and b for a, b in zip(f, s)),
            "neither": sum(not a and not b for a, b in zip(f, s)),
        }
        for n in names:
            if n not in EXPERTS:  # a fused model: right where both experts fail / wrong where one was right
                entry[f"{n}_rescues"] = sum(m and not a and not b for m, a, b in zip(em[n], f, s))
                entry[f"{n}_misses"] = sum(not m and (a or b) for m, a, b in zip(em[n], f, s))
        best = max(entry["exact_match"].values())
        winners = [n for n, v in entry["exact_match"].items() if v == best]
        entry["best"] = winners[0] if len(winners) == 1 else "tie"
        out.append(entry)
    return out


def print_summary(summary: list[dict[str, Any]], names: list[str]) -> None:
    """Two narrow tables: exact match per category, then who is right where the experts disagree."""
    from rich.table import Table

    from harness.cli import escape

    fused = [n for n in names if n not in EXPERTS]
    em = Table(title="exact match per category")
    wins = Table(title="where each expert wins (examples)")
    for col in ["category", "n", *names, "best"]:
        em.add_column(col, justify="left" if col in ("category", "best") else "right")
    for col in ["category", "foundation only", "sft only", "both", "neither"]:
        wins.add_column(col, justify="left" if col == "category" else "right")
    for n in fused:
        wins.add_column(f"{n} rescues", justify="right")
        wins.add_column(f"{n} misses", justify="right")
    for e in summary:
        if e["category"] == "all" and e is summary[-1]:
            em.add_section()
            wins.add_section()
        em.add_row(escape(e["category"]), str(e["n"]), *[f"{e['exact_match'][n]:.3f}" for n in names], e["best"])
        cells = [str(e[k]) for k in ("foundation_only", "sft_only", "both", "neither")]
        for n in fused:
            cells += [str(e[f"{n}_rescues"]), str(e[f"{n}_misses"])]
        wins.add_row(escape(e["category"]), *cells)
    console = new_console()
    console.print(em)
    console.print(wins)
    if fused:
        console.print(f"rescues: {fused[0]} right where both experts are wrong; misses: wrong where an expert is right")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run_file(args: argparse.Namespace, cfg) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from harness.cli import setup_logging
    from harness.models import build_drafter, build_fused_model
    from sopmoe_models.data import load_jsonl
    from sopmoe_models.factory import load_pair
    from sopmoe_models.prompt import format_prompt

    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    eval_file = Path(cfg.data.eval_file)
    output = args.output_file or Path("results/generate") / f"{eval_file.stem}.{args.model}.jsonl"
    guard_outputs(output, args, inputs=[eval_file, args.config])
    setup_logging(args.log_level, args.log_file)
    examples = load_jsonl(eval_file)[: args.limit]
    pair = load_pair(cfg)
    drafter = build_drafter(cfg, pair)  # the chosen model's only: the experts' answers beside it decode plainly
    names = [args.model, *[n for n in EXPERTS if n != args.model]]
    prompts = [format_prompt(ex.input, cfg.data.prompt_format, pair.tokenizer) for ex in examples]
    log.info("generate: %d examples from %s with %s", len(examples), eval_file, ", ".join(names))
    outputs: dict[str, list[str]] = {}
    view = None  # RoutingView of --model btm
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with new_progress(*columns) as progress:
        for name in names:
            task = progress.add_task(f"{name:>10}", total=len(prompts))
            model = build_fused_model(name, cfg, pair, router_checkpoint=args.router_checkpoint,
                                      allow_missing_fingerprint=args.allow_missing_fingerprint)
            view = RoutingView(model, prompts) if name == "btm" else view
            outputs[name] = generate_texts(
                model, prompts, cfg.generation, batch_size=cfg.generation.batch_size,
                on_batch=lambda n, task=task: progress.advance(task, n),
                on_result=view.on_result if name == "btm" else None,
                draft=drafter if name == args.model else None,
            )
    rows = []
    for i, ex in enumerate(examples):
        answers = {n: outputs[n][i] for n in names}
        rows.append({
            "id": ex.id, "category": ex.category, "input": ex.input, "reference": ex.output, "model": args.model,
            "output": answers[args.model], "outputs": answers,
            "exact_match": {n: exact_match(a, ex.output) for n, a in answers.items()},
        })
        if view is not None:
            rows[-1]["routing"] = view.shares(i)
    _write_jsonl(output, rows)
    summary = summarize(rows, names)
    summary_file = output.with_name(output.stem + ".summary.json")
    tmp = summary_file.with_suffix(".json.tmp")
    record = {"eval_file": str(eval_file), "models": names, "summary": summary}
    if drafter is not None:
        record["speculation"] = {"model": args.model, **drafter.describe()}
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.replace(summary_file)
    cfg.save(output.with_name(output.stem + ".config.yaml"))
    print_summary(summary, names)
    _show_routing(args, view, [ex.id or ex.input for ex in examples])
    _show_speculation(args.model, drafter)
    log.info("wrote %s (%d lines), %s", output, len(rows), summary_file)
    return 0


def companions(output: Path) -> list[Path]:
    """The files ``--eval_file`` mode writes for ``--output_file output``."""
    return [output, output.with_name(output.stem + ".summary.json"), output.with_name(output.stem + ".config.yaml")]


def guard_outputs(output: Path | None, args: argparse.Namespace, inputs: list) -> None:
    """Refuse an output that is an input (always) or that exists (unless --overwrite)."""
    from sopmoe_models.errors import UserError
    from sopmoe_models.outputs import refuse_existing, resolved

    targets = [*(companions(output) if output is not None else []), *([args.route_html] if args.route_html else [])]
    ins = {resolved(p) for p in inputs if p}
    for t in targets:
        if resolved(t) in ins:
            raise UserError(f"{t} is an input of this command (--eval_file or --config); writing it would replace the "
                            "input: choose another --output_file / --route_html")
        if resolved(t).is_dir():
            raise UserError(f"{t} is a folder; --output_file and --route_html name files")
        if not args.overwrite:
            refuse_existing(t, "an output file")


def _show_speculation(model: str, drafter, stderr: bool = False) -> None:
    """One line: the drafter, k and its acceptance rate (after the answers; on stderr in --prompt mode)."""
    if drafter is None:
        return
    import sys

    print(f"speculative decoding of {model}: drafter {drafter.path}, k={drafter.num_draft_tokens} {drafter.schedule}: "
          f"{drafter.stats.describe()}", file=sys.stderr if stderr else sys.stdout)


def _show_routing(args: argparse.Namespace, view, labels: list[str] | None = None) -> None:
    if view is None:
        return
    if args.show_router_stats:
        view.print_table(labels)
    if args.route_html:
        log.info("routing view -> %s", view.write_html(args.route_html))


def run(args: argparse.Namespace) -> int:
    from harness.cli import config_from_args

    cfg = config_from_args(args)
    if args.model == "btm":
        cfg = btm_config(cfg, args.router_checkpoint)  # expert paths from router.json when the config has none
    elif args.show_router_stats or args.route_html:
        raise ValueError("--show_router_stats and --route_html need --model btm")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the answer / the tables are the output; no weight-loading bars
    if args.prompt is None and not cfg.data.eval_file:
        raise ValueError("give --prompt TEXT or --eval_file FILE (or set data.eval_file in the config)")
    if args.prompt is None:
        return run_file(args, cfg)
    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    guard_outputs(None, args, inputs=[args.config, cfg.data.eval_file])
    from harness.models import build_drafter, build_fused_model
    from sopmoe_models.prompt import format_prompt

    model = build_fused_model(args.model, cfg, router_checkpoint=args.router_checkpoint,
                              allow_missing_fingerprint=args.allow_missing_fingerprint)
    drafter = build_drafter(cfg, model.pair)
    prompt = format_prompt(args.prompt, cfg.data.prompt_format, model.tokenizer)
    view = RoutingView(model, [prompt]) if args.model == "btm" else None
    print(generate_texts(model, [prompt], cfg.generation, on_result=view.on_result if view else None,
                         draft=drafter)[0])
    _show_routing(args, view, [args.prompt])
    _show_speculation(args.model, drafter, stderr=not args.show_router_stats)
    return 0
