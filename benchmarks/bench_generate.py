"""Benchmark (not a test): ensemble generation and lm-eval scoring against plain Hugging Face, same run (DESIGN §8).

Two random Qwen3 shapes with the test bed's character tokenizer (built from the shipped task data): ``testbed``
(hidden 128, 2 layers, as ``sopmoe testbed``) and ``large`` (hidden 512, 8 layers). For each:

- generation: greedy, exactly ``--new_tokens`` new tokens (EOS disabled on both sides), batch 1 and 8 (left
  padded): tokens/s of HF ``generate`` on one expert vs :meth:`EnsembleLM.generate` (two experts, KV caches).
  ``fused 1 expert`` is our loop at weights (1, 0) (one expert run): it isolates the loop's own overhead.
  Target: ensemble >= 0.45x HF (0.5x is the two-forward limit on one device).
- scoring: lm-eval on the four sopmoe loglikelihood tasks (shipped data, ``--score_limit`` examples each): seconds
  inside ``loglikelihood`` for ``hf`` (``HFLM`` on the foundation folder) vs ``sopmoe_ensemble`` (0.5/0.5 prob).
  Target: <= 2.1x ``hf``.

Timings are the best of ``--repeats`` interleaved runs after a warm-up, with ``--threads`` torch threads (default 1)
and, by default, the process's CPU seconds: on a shared machine other jobs stretch wall time, and more so for the
longer-running ensemble, so best-of wall times bias the ratio against it (``--clock wall`` to see). Usage::

    python benchmarks/bench_generate.py [--shapes testbed,large] [--threads 1] [--repeats 3] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import DATA, SHAPES, best_seconds, random_pair, task_tokenizer  # sets the HF offline variables

os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-request bars; the table is the output

import torch

from sopmoe_models.data import collate, load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import load_experts
from sopmoe_models.prompt import format_prompt

CLOCK = time.process_time  # --clock; set in main()
LL_TASKS = ["sop_strict", "reasoning", "mixed", "eval"]


def bench_generation(pair, prompts: list[str], batch: int, new_tokens: int, repeats: int) -> dict[str, float]:
    tok = pair.tokenizer
    enc = [{"input_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts[:batch]]
    b = collate(enc, tok.pad_token_id, padding_side="left")
    ids, mask = b["input_ids"], b["attention_mask"]
    model = pair.foundation
    model.generation_config.eos_token_id = None  # exactly new_tokens tokens on both sides

    def hf():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        assert out.shape[1] == ids.shape[1] + new_tokens

    def fused(w_f: float, w_s: float):
        ens = EnsembleLM(pair, w_f, w_s, "prob")

        def go():
            out = ens.generate(ids, mask, max_new_tokens=new_tokens, eos_token_id=[])
            assert out.sequences.shape[1] == new_tokens

        return go

    n = batch * new_tokens
    secs = best_seconds({"hf": hf, "fused 1 expert": fused(1.0, 0.0), "ensemble": fused(0.5, 0.5)}, repeats, CLOCK)
    return {name: n / t for name, t in secs.items()}


def bench_scoring(pair, foundation_dir: Path, batch_size: int, repeats: int, limit: int | None) -> dict[str, float]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sopmoe_models.adapters.ensemble import EnsembleLMEval
    from sopmoe_models.lm_eval_plugin import register_all

    register_all()
    tm = TaskManager(metadata={"data_dir": str(DATA), "tokenizer": str(foundation_dir)})
    models = {
        "hf": HFLM(pretrained=str(foundation_dir), device="cpu", batch_size=batch_size),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="testbed,large")
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

    examples = [ex for f in LL_TASKS for ex in load_jsonl(DATA / f"{f}.jsonl")]
    tok = task_tokenizer()
    prompts = [format_prompt(ex.input) for ex in examples[::97]][:8]
    table = Table(title=f"sopmoe ensemble vs plain HF (torch threads {args.threads}, {args.clock} time, best of {args.repeats})")
    for col in ("shape", "measure", "hf", "fused 1 expert", "ensemble", "ensemble / hf", "target"):
        table.add_column(col, justify="left" if col in ("shape", "measure") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            spec = SHAPES[shape]
            dirs = random_pair(Path(tmp) / shape, spec, tok)
            pair = load_experts(*dirs, dtype="float32", device="cpu")
            label = f"{shape} (h{spec.hidden_size}, L{spec.num_layers}, V{pair.vocab_size})"
            for batch in (int(b) for b in args.batches.split(",")):
                r = bench_generation(pair, prompts, batch, args.new_tokens, args.repeats)
                ratio = r["ensemble"] / r["hf"]
                table.add_row(label, f"generate tok/s, batch {batch}", f"{r['hf']:.0f}", f"{r['fused 1 expert']:.0f}",
                              f"{r['ensemble']:.0f}", f"{ratio:.2f}x", "≥ 0.45x " + ("ok" if ratio >= 0.45 else "MISS"))
            if not args.skip_scoring:
                s = bench_scoring(pair, dirs[0], args.score_batch_size, args.repeats, args.score_limit or None)
                ratio = s["ensemble"] / s["hf"]
                table.add_row(label, f"lm-eval scoring s ({4 * (args.score_limit or 200)} requests)", f"{s['hf']:.2f}", "", f"{s['ensemble']:.2f}",
                              f"{ratio:.2f}x", "≤ 2.1x " + ("ok" if ratio <= 2.1 else "MISS"))
            table.add_section()
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
