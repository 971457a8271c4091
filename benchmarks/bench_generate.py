"""Benchmark (not a test): fused generation, speculative or not, and lm-eval scoring against plain Hugging Face, in
one run (DESIGN §8, §10).

Random Qwen3 pairs with the test bed's character tokenizer (built from the shipped task data): ``testbed`` (hidden
128, 2 layers, as ``sopmoe testbed``) and ``large`` (hidden 512, 8 layers); and, with ``--bed DIR``, a trained bed
written by ``sopmoe demo`` (``DIR/testbed/{foundation,sft}``, ``DIR/btm/<router>/best_router.safetensors``, the
distilled student ``DIR/distill/best_student``; prompts from ``DIR/testbed/data/test``, in the bed's prompt format). For each:

- generation: greedy, the same 8 prompts in batches of 1 and of 8 (left padded), exactly ``--new_tokens`` new tokens
  (EOS disabled on both sides) or, with ``--eos``, up to EOS (tokens/s counts the tokens each row really generated). Tokens/s of HF ``generate``
  on one expert (``hf``), of each fused model's own loop (``plain``), and of each fused model with each drafter
  (speculative decoding, :mod:`sopmoe_models.speculative`), with the drafter's acceptance rate, the tokens a row
  gains per fused forward, and whether the speculative output is identical to the plain one (``same``).
  Drafters: ``student`` (the bed's distilled student), ``foundation`` (the foundation expert itself: a 1x drafter
  that agrees with the fused model wherever the foundation does), ``random`` (an untrained model: the worst case),
  ``lookup`` (no model: drafts copied from the prompt and ``--draft_corpus``, by default the bed's training answers,
  :mod:`sopmoe_models.lookup`, ``--lookup_tokens`` per round). With ``lookup``, batch 1 also times HF's own prompt
  lookup decoding of the single model (``generate(prompt_lookup_num_tokens=...)``, row ``hf`` / ``hf lookup``,
  ``same`` = identical to HF's plain greedy output): a reference, since the targets stay against plain HF generate.
  Targets: plain ensemble >= 0.45x HF (0.5x is the two-forward limit); speculative >= 0.8x HF at batch 1.
- scoring: lm-eval on the four sopmoe loglikelihood tasks (shipped data, ``--score_limit`` examples each): seconds
  inside ``loglikelihood`` for ``hf`` (``HFLM`` on the foundation folder) vs ``sopmoe_ensemble`` (0.5/0.5 prob).
  Target: <= 2.1x ``hf``.

Timings are the best of ``--repeats`` interleaved runs after a warm-up, with ``--threads`` torch threads (default 1)
and, by default, the process's CPU seconds: on a shared machine other jobs stretch wall time, and more so for the
longer-running ensemble, so best-of wall times bias the ratio against it (``--clock wall`` to see). Usage::

    python benchmarks/bench_generate.py [--shapes testbed,large] [--bed DIR] [--threads 1] [--repeats 3]
        [--clock cpu|wall] [--drafters foundation,random,lookup] [--num_draft_tokens 8] [--draft_schedule heuristic]
        [--draft_corpus FILE] [--lookup_tokens 8] [--eos] [--quantization none,int8]

``--quantization none,int8`` times each random shape with float32 and with int8 experts (torchao weight-only,
``sopmoe[quant]``), HF ``generate`` on the same quantized foundation: the ratios hold within a row, the tokens/s
across rows show what int8 costs on this CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import (  # sets the HF offline variables
    DATA,
    SHAPES,
    bed_dtype,
    bed_prompt_format,
    best_seconds,
    random_pair,
    task_tokenizer,
)

os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-request bars; the table is the output

import torch

from sopmoe_models.data import collate, load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import load_experts, quantization_of
from sopmoe_models.lookup import load_lookup_drafter
from sopmoe_models.prompt import format_prompt
from sopmoe_models.routers.stats import generated_lengths
from sopmoe_models.speculative import Drafter, SpeculationStats, load_drafter

CLOCK = time.process_time  # --clock; set in main()
LL_TASKS = ["sop_strict", "reasoning", "mixed", "eval"]


def bench_generation(pair, fused: dict, drafters: dict, prompts: list[str], batch: int,
                     new_tokens: int, repeats: int, eos: bool, hf_lookup: int = 0) -> list[dict]:
    """One row per (fused model, drafter or None): tok/s of HF, plain and speculative decoding, all timed together.

    Every timed function answers all ``prompts`` (8), in left-padded batches of ``batch``: batch 1 is eight
    one-prompt decodes, so a short or atypical first prompt does not decide the number. ``hf_lookup`` > 0 (batch 1
    only: transformers' assisted generation refuses batches) also times HF's own prompt lookup decoding of the single
    model, ``generate(prompt_lookup_num_tokens=hf_lookup)``, as a reference row (fused "hf", drafter "hf lookup")."""
    tok = pair.tokenizer
    device = pair.foundation.get_output_embeddings().weight.device  # HF generate wants its inputs there
    batches = []
    for i in range(0, len(prompts), batch):
        enc = [{"input_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts[i : i + batch]]
        b = collate(enc, tok.pad_token_id, padding_side="left")
        batches.append((b["input_ids"].to(device), b["attention_mask"].to(device)))
    model = pair.foundation
    eos_ids = [tok.eos_token_id] if eos else []
    pad = tok.pad_token_id if eos else None
    model.generation_config.eos_token_id = tok.eos_token_id if eos else None  # EOS off: new_tokens on both sides
    produced: dict[str, int] = {}  # tokens each timed function generates (the same on every call: greedy)
    results: dict[str, list] = {}

    def hf():
        n = 0
        with torch.inference_mode():
            for ids, mask in batches:
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                n += sum(generated_lengths(out[:, ids.shape[1]:], eos_ids, pad))
        produced["hf"] = n

    def hf_pld():
        n, outs = 0, []
        with torch.inference_mode():
            for ids, mask in batches:
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, prompt_lookup_num_tokens=hf_lookup)
                n += sum(generated_lengths(out[:, ids.shape[1]:], eos_ids, pad))
                outs.append(out)
        produced["hf lookup"] = n
        results["hf lookup"] = outs

    def hf_plain_outputs():
        with torch.inference_mode():
            return [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id) for ids, mask in batches]

    def run(name, m, drafter=None):
        def go():
            outs = [m.generate(ids, mask, max_new_tokens=new_tokens, eos_token_id=eos_ids, draft=drafter)
                    for ids, mask in batches]
            produced[name] = sum(sum(generated_lengths(o.sequences, eos_ids, pad)) for o in outs)
            results[name] = outs

        return go

    fns = {"hf": hf}
    if hf_lookup and batch == 1:
        fns["hf lookup"] = hf_pld
    for fname, m in fused.items():
        fns[fname] = run(fname, m)
        for dname, drafter in drafters.items():
            fns[f"{fname}+{dname}"] = run(f"{fname}+{dname}", m, drafter)
    secs = best_seconds(fns, repeats, CLOCK)
    rate = {name: produced[name] / t for name, t in secs.items()}
    rows = []
    if "hf lookup" in fns:
        same = all(torch.equal(a, b) for a, b in zip(results["hf lookup"], hf_plain_outputs()))
        rows.append({"fused": "hf", "drafter": "hf lookup", "hf": rate["hf"], "tok/s": rate["hf lookup"],
                     "plain": rate["hf"], "acceptance": None, "per_round": None, "same": same})
    for fname in fused:
        plain = results[fname]
        rows.append({"fused": fname, "drafter": "-", "hf": rate["hf"], "tok/s": rate[fname]})
        for dname in drafters:
            outs = results[f"{fname}+{dname}"]
            stats = SpeculationStats()
            for o in outs:
                stats.add(o.speculation)
            rows.append({"fused": fname, "drafter": dname, "hf": rate["hf"], "tok/s": rate[f"{fname}+{dname}"],
                         "plain": rate[fname], "acceptance": stats.acceptance_rate, "per_round": stats.tokens_per_round,
                         "same": all(torch.equal(o.sequences, p.sequences) for o, p in zip(outs, plain))})
    return rows


def bench_scoring(pair, foundation_dir: Path, batch_size: int, repeats: int, limit: int | None) -> dict[str, float]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sopmoe_models.adapters.ensemble import EnsembleLMEval
    from sopmoe_models.lm_eval_plugin import register_all

    register_all()
    tm = TaskManager(metadata={"data_dir": str(DATA), "tokenizer": str(foundation_dir)})
    models = {
        "hf": (HFLM(pretrained=str(foundation_dir), device="cpu", batch_size=batch_size)
               if quantization_of(pair.foundation) == "none"  # quantized: the same quantized expert object
               else HFLM(pretrained=pair.foundation, tokenizer=pair.tokenizer, batch_size=batch_size)),
        "ensemble": EnsembleLMEval(pair=pair, foundation_weight=0.5, sft_weight=0.5, mix="prob", batch_size=batch_size),
    }
    spent: dict[str, list[float]] = {name: [] for name in models}
    for name, lm in models.items():
        inner = lm.loglikelihood

        def timed(requests, *a, inner=inner, log=spent[name], **kw):
            t0 = CLOCK()
            try:
                return inner(requests, *a, **kw)
            finally:
                log.append(CLOCK() - t0)

        lm.loglikelihood = timed
        lm_eval.simple_evaluate(model=lm, tasks=LL_TASKS, task_manager=tm, limit=4)  # warm-up
        spent[name].clear()
    best: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so load drift on a shared machine hits both alike
        for name, lm in models.items():
            n = len(spent[name])
            lm_eval.simple_evaluate(model=lm, tasks=LL_TASKS, task_manager=tm, limit=limit)
            best[name] = min(best.get(name, float("inf")), sum(spent[name][n:]))
    seconds = best
    return seconds


def random_drafter(pair, seed: int = 7) -> torch.nn.Module:
    """An untrained model of the foundation's shape (a drafter that agrees only by chance)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(pair.foundation.config).eval().requires_grad_(False)


def beds(args, tmp: Path, tok):
    """(label, pair, fused models, drafters, prompts, foundation folder) for each shape and the --bed."""
    from sopmoe_models.routers import load_router

    examples = [ex for f in LL_TASKS for ex in load_jsonl(DATA / f"{f}.jsonl")]
    shipped = [format_prompt(ex.input) for ex in examples[::97]][:8]
    wanted = [d for d in args.drafters.split(",") if d]
    kw = {"num_draft_tokens": args.num_draft_tokens, "schedule": args.draft_schedule, "confidence": args.draft_confidence}

    def lookup(pair, corpus):
        return load_lookup_drafter(pair, pair.width, corpus=corpus, num_draft_tokens=args.lookup_tokens)

    for shape, q in [(s, q) for s in args.shapes.split(",") if s for q in args.quantization.split(",") if q]:
        spec = SHAPES[shape]
        dirs = random_pair(tmp / shape, spec, tok) if not (tmp / shape).is_dir() else (tmp / shape / "foundation",
                                                                                        tmp / shape / "sft")
        pair = load_experts(*dirs, dtype="float32", device="cpu", quantization=q)  # hf generate runs it too
        drafters = {}
        if "foundation" in wanted:
            drafters["foundation"] = load_drafter(dirs[0], pair, **kw)
        if "random" in wanted:
            drafters["random"] = Drafter(random_drafter(pair), pair.width, **kw)
        if "lookup" in wanted:
            drafters["lookup"] = lookup(pair, args.draft_corpus)
        fused = {"ensemble": EnsembleLM(pair, 0.5, 0.5, "prob")}
        weights = "" if q == "none" else f", {q} weights"
        yield (f"{shape} (h{spec.hidden_size}, L{spec.num_layers}, V{pair.vocab_size}{weights})", pair, fused, drafters,
               shipped, dirs[0])
    if args.bed:
        bed = Path(args.bed)
        tb = bed / "testbed"
        pair = load_experts(tb / "foundation", tb / "sft", dtype=bed_dtype(tb), device="cpu")
        fused = {"ensemble": EnsembleLM(pair, 0.5, 0.5, "prob")}
        for r in [r for r in args.routers.split(",") if r]:
            fused[r] = load_router(bed / "btm" / r / "best_router.safetensors", pair)
        drafters = {}
        student = bed / "distill" / "best_student"
        if "student" in wanted and (student / "config.json").is_file():
            drafters["student"] = load_drafter(student, pair, **kw)
        if "foundation" in wanted:
            drafters["foundation"] = load_drafter(tb / "foundation", pair, **kw)
        if "random" in wanted:
            drafters["random"] = Drafter(random_drafter(pair), pair.width, **kw)
        if "lookup" in wanted:
            train = tb / "data" / "train" / "train.jsonl"
            drafters["lookup"] = lookup(pair, args.draft_corpus or (train if train.is_file() else None))
        split = next(d for d in (tb / "data" / "test", tb / "data" / "eval") if d.is_dir())  # eval: older beds
        data = sorted(split.glob("*.jsonl"))
        exs = [ex for f in data if f.stem in LL_TASKS for ex in load_jsonl(f)]
        style = bed_prompt_format(tb)
        prompts = [format_prompt(ex.input, style, pair.tokenizer) for ex in exs[:: max(1, len(exs) // 8)]][:8]
        cfg = pair.foundation.config
        label = f"bed {bed.name} (h{cfg.hidden_size}, L{cfg.num_hidden_layers}, V{pair.vocab_size})"
        yield label, pair, fused, drafters, prompts, tb / "foundation"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="testbed,large", help="random pairs to time ('' = none)")
    ap.add_argument("--bed", default=None, help="a `sopmoe demo` output folder (trained experts, routers, student)")
    ap.add_argument("--routers", default="token_level", help="--bed: routers timed besides the ensemble")
    ap.add_argument("--drafters", default="student,foundation,random", help="drafters timed (where they exist)")
    ap.add_argument("--num_draft_tokens", type=int, default=8)
    ap.add_argument("--draft_schedule", choices=["constant", "heuristic"], default="heuristic")
    ap.add_argument("--draft_confidence", type=float, default=0.0, help="end drafting below this draft probability")
    ap.add_argument("--draft_corpus", default=None,
                    help="lookup drafter's corpus (default: --bed's testbed/data/train/train.jsonl; shapes: none)")
    ap.add_argument("--lookup_tokens", type=int, default=8,
                    help="lookup drafter's k, and HF's prompt_lookup_num_tokens in the 'hf lookup' reference row")
    ap.add_argument("--quantization", default="none",
                    help="random shapes' expert weights, each timed: none,int8 (torchao; hf generate on the same)")
    ap.add_argument("--eos", action="store_true", help="stop rows at EOS (default: exactly --new_tokens tokens)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--score_batch_size", type=int, default=16)
    ap.add_argument("--score_limit", type=int, default=100, help="examples per task for scoring (0 = all 200)")
    ap.add_argument("--skip_scoring", action="store_true")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU seconds (robust to other jobs on a shared machine); wall: elapsed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    from rich.console import Console
    from rich.table import Table

    tok = task_tokenizer()
    title = (f"sopmoe fused generation vs plain HF (torch threads {args.threads}, {args.clock} time, best of "
             f"{args.repeats}, {'up to EOS' if args.eos else f'{args.new_tokens} tokens'}, draft k={args.num_draft_tokens} "
             f"{args.draft_schedule}, confidence {args.draft_confidence:g}"
             + (f"; lookup k={args.lookup_tokens}" if "lookup" in args.drafters.split(",") else "") + ")")
    table = Table(title=title)
    cols = ("shape", "measure", "fused", "drafter", "hf", "tok/s", "÷ hf", "÷ plain", "accept", "tok/fwd", "same",
            "target")
    for col in cols:
        table.add_column(col, justify="left" if col in ("shape", "measure", "fused", "drafter") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for label, pair, fused, drafters, prompts, foundation_dir in beds(args, Path(tmp), tok):
            for batch in (int(b) for b in args.batches.split(",")):
                rows = bench_generation(pair, fused, drafters, prompts, batch, args.new_tokens, args.repeats, args.eos,
                                        args.lookup_tokens if "lookup" in drafters else 0)
                for r in rows:
                    ratio = r["tok/s"] / r["hf"]
                    spec = r["drafter"] != "-"
                    if r["fused"] == "hf":
                        target = "reference"
                    elif spec:
                        target = ("≥ 0.8x " + ("ok" if ratio >= 0.8 else "MISS")) if batch == 1 else ""
                    else:
                        target = "≥ 0.45x " + ("ok" if ratio >= 0.45 else "MISS")
                    table.add_row(
                        label, f"generate tok/s, batch {batch}", r["fused"], r["drafter"], f"{r['hf']:.0f}",
                        f"{r['tok/s']:.0f}", f"{ratio:.2f}x",
                        f"{r['tok/s'] / r['plain']:.2f}x" if spec and r["fused"] != "hf" else "",
                        f"{r['acceptance']:.2f}" if spec and r["acceptance"] is not None else "",
                        f"{r['per_round']:.2f}" if spec and r["per_round"] is not None else "",
                        ("yes" if r["same"] else "NO") if spec else "", target)
                table.add_section()
            if not args.skip_scoring:
                s = bench_scoring(pair, foundation_dir, args.score_batch_size, args.repeats, args.score_limit or None)
                ratio = s["ensemble"] / s["hf"]
                table.add_row(label, f"lm-eval scoring s ({4 * (args.score_limit or 200)} requests)", "ensemble", "",
                              f"{s['hf']:.2f}", f"{s['ensemble']:.2f}", f"{ratio:.2f}x", "", "", "", "",
                              "≤ 2.1x " + ("ok" if ratio <= 2.1 else "MISS"))
                table.add_section()
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
