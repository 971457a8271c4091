"""Benchmark (not a test): what the MoE checkpoint (``sopmoe moe``, BTX) costs against one expert, in one run (issue 21).

For each pair, the same prompts and requests, timed interleaved (best of ``--repeats`` after a warm-up, this
process's CPU seconds by default: ``--clock wall`` for wall time), on ``--threads`` torch threads:

- scoring: lm-eval's ``HFLM`` on the four sopmoe loglikelihood tasks (``--score_limit`` examples each), seconds inside
  ``loglikelihood``: the foundation (``hf``), the MoE served top-1 and top-2 (the same checkpoint loaded with
  ``num_experts_per_tok`` 1 and 2: plain transformers, no sopmoe code), and, with ``--bed``, the token-level router
  (``sopmoe_btm``, two expert forwards per token);
- generation: HF ``generate``, greedy, exactly ``--new_tokens`` tokens (EOS off), batch 1 and batch 8 (left padded),
  tokens/s of the foundation and of the MoE top-1 / top-2; with ``--bed`` the token-level router's own KV-cached loop.

Every ratio is against the foundation measured in the same run. Targets (issue 21): top-1 scoring <= 1.2x the
foundation and HF batch-1 generation >= 0.8x one model; top-2 better than token_level on both. The FLOP limit of
top-2 is (attention + 2 FFN + head) / (attention + FFN + head) (:func:`sopmoe_models.moe.inference_cost`).

    python benchmarks/bench_moe.py --shapes testbed,large                    # random pairs, MoE built here
    python benchmarks/bench_moe.py --shapes '' --bed runs/demo --moe runs/demo/moe/chosen   # a trained bed
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import (  # sets the offline variables
    DATA,
    SHAPES,
    bed_config,
    best_seconds,
    random_pair,
    task_tokenizer,
)

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from sopmoe_models.data import collate, load_jsonl
from sopmoe_models.moe import build_moe, inference_cost, read_config
from sopmoe_models.prompt import format_prompt

LL_TASKS = ["sop_strict", "reasoning", "mixed", "eval"]
CLOCK = time.process_time


def load(path: Path, dtype: str, top_k: int | None = None):
    from transformers import AutoModelForCausalLM

    extra = {"num_experts_per_tok": top_k} if top_k else {}
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), **extra).eval()


def scoring_seconds(models: dict, tokenizer_dir: Path, data_dir: Path, style: str, batch_size: int, repeats: int,
                    limit: int | None) -> dict[str, float]:
    """Best seconds inside lm-eval's ``loglikelihood`` of each model (``HFLM`` or an adapter) on the same requests."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from sopmoe_models.lm_eval_plugin import register_all

    register_all()
    meta = {"data_dir": str(data_dir), "tokenizer": str(tokenizer_dir), "prompt_format": style}
    tm = TaskManager(include_defaults=False, metadata=meta)
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
    runs = {name: (lambda lm=lm: lm_eval.simple_evaluate(model=lm, tasks=LL_TASKS, task_manager=tm, limit=limit))
            for name, lm in models.items()}
    for fn in runs.values():
        fn()  # warm-up
    best = {name: float("inf") for name in models}
    for _ in range(repeats):  # interleaved: load drift on a shared machine hits every model alike
        for name, fn in runs.items():
            n = len(spent[name])
            fn()
            best[name] = min(best[name], sum(spent[name][n:]))
    return best


def generation_rates(models: dict, tok, prompts: list[str], batch: int, new_tokens: int, repeats: int) -> dict:
    """Tokens/s of each model's ``generate`` (or a fused model's own loop) on the same left-padded batches."""
    batches = []
    for i in range(0, len(prompts), batch):
        enc = [{"input_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts[i:i + batch]]
        b = collate(enc, tok.pad_token_id, padding_side="left")
        batches.append((b["input_ids"], b["attention_mask"]))

    def run(model):
        def fn():
            with torch.inference_mode():
                for ids, mask in batches:
                    if hasattr(model, "generation_config"):
                        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                       pad_token_id=tok.pad_token_id)
                    else:  # a fused model (sopmoe_models.fused.FusedLM): its own KV-cached loop
                        model.generate(ids, mask, max_new_tokens=new_tokens, eos_token_id=[])
        return fn

    seconds = best_seconds({name: run(m) for name, m in models.items()}, repeats, CLOCK)
    total = len(prompts) * new_tokens
    return {name: total / s for name, s in seconds.items()}


def pairs(args, tmp: Path):
    """(label, foundation dir, sft dir, MoE dir, bed folder or None, data dir, prompt style, dtype) per pair."""
    tok = task_tokenizer() if args.shapes else None
    for shape in [s for s in args.shapes.split(",") if s]:
        f, s = random_pair(tmp / shape, shape, tok)
        moe = tmp / f"{shape}-moe"
        build_moe(f, s, moe, attention="mean", top_k=2)
        spec = SHAPES[shape]
        yield f"random {shape} (h{spec.hidden_size}, L{spec.num_layers})", f, s, moe, None, DATA, "raw", "float32"
    if args.bed:
        bed = Path(args.bed)
        tb = bed / "testbed"
        cfg = bed_config(tb)
        dtype = cfg.models.foundation.dtype if cfg.models.foundation.dtype != "auto" else "float32"
        moe = Path(args.moe) if args.moe else bed / "moe" / "chosen"
        yield f"bed {bed}", tb / "foundation", tb / "sft", moe, bed, tb / "data" / "test", cfg.data.prompt_format, dtype


def bench(args, label, f_dir, s_dir, moe_dir, bed, data_dir, style, dtype) -> list[dict]:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(f_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    models = {"foundation (hf)": load(f_dir, dtype), "moe top-1": load(moe_dir, dtype, 1),
              "moe top-2": load(moe_dir, dtype, 2)}
    fused = {}
    router = bed / "btm" / "token_level" / "best_router.safetensors" if bed else None
    if router is not None and router.is_file():
        from sopmoe_models.experts import load_experts
        from sopmoe_models.routers import load_router

        pair = load_experts(f_dir, s_dir, dtype=dtype, device="cpu")
        fused["token_level"] = load_router(router, pair)
    lms = {name: HFLM(pretrained=m, tokenizer=tok, batch_size=args.score_batch_size, softmax_dtype="float32")
           for name, m in models.items()}
    if fused:
        from sopmoe_models.adapters.btm import BTMLMEval

        lms["token_level"] = BTMLMEval(fused=fused["token_level"], batch_size=args.score_batch_size)
    score = {} if args.skip_scoring else scoring_seconds(lms, f_dir, data_dir, style, args.score_batch_size,
                                                          args.repeats, args.score_limit or None)
    exs = [ex for t in LL_TASKS for ex in load_jsonl(Path(data_dir) / f"{t}.jsonl")]
    prompts = [format_prompt(ex.input, style, tok) for ex in exs[:: max(1, len(exs) // 8)]][:8]
    gen = {b: generation_rates({**models, **fused}, tok, prompts, b, args.new_tokens, args.repeats)
           for b in [int(x) for x in args.batches.split(",")]}
    cfg = read_config(Path(moe_dir))
    flops = {"foundation (hf)": 1.0, "moe top-1": inference_cost(cfg, 1), "moe top-2": inference_cost(cfg, 2),
             "token_level": 2.0}
    rows = []
    base = "foundation (hf)"
    for name in [*models, *fused]:
        row = {"pair": label, "model": name, "flops_x": flops[name]}
        if score:
            row.update(scoring_s=round(score[name], 3), scoring_x=round(score[name] / score[base], 3))
        for b, rates in gen.items():
            row.update({f"gen_b{b}_tok_s": round(rates[name], 1), f"gen_b{b}_x": round(rates[name] / rates[base], 3)})
        rows.append(row)
    return rows


def main() -> None:
    global CLOCK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="testbed,large", help="random pairs, MoE built here with zero gates ('' = none)")
    ap.add_argument("--bed", default=None, help="a `sopmoe demo` output folder (experts, token_level router, MoE)")
    ap.add_argument("--moe", default=None, help="the bed's MoE checkpoint (default: BED/moe/chosen)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--score_batch_size", type=int, default=16)
    ap.add_argument("--score_limit", type=int, default=50, help="examples per task for scoring (0 = all)")
    ap.add_argument("--skip_scoring", action="store_true")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    ap.add_argument("--md", default=None, help="write the printed tables here as markdown")
    args = ap.parse_args()
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in pairs(args, Path(tmp)):
            rows += bench(args, *p)
    cols = [c for c in rows[0] if c != "pair"]
    lines = [f"threads {args.threads}, clock {args.clock}, best of {args.repeats}; x = against the foundation, same run"]
    for label in dict.fromkeys(r["pair"] for r in rows):
        lines += ["", label, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows if r["pair"] == label]
    print("\n".join(lines))
    if args.md:
        command = shlex.join(["python", "benchmarks/bench_moe.py", *sys.argv[1:]])
        Path(args.md).write_text(f"<!-- generated by `{command}` -->\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
