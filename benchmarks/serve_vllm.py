"""Benchmark: the fused pair's MoE checkpoint (``sopmoe moe``) and the distilled student served by vLLM, checked for
greedy identity against transformers and timed beside it, in one run (issue 21, item 4).

vLLM's CPU build pins its own transformers and torch, so it lives in a venv of its own without sopmoe (``make
vllm-venv`` builds ``.venv-vllm``). This script therefore runs in two interpreters:

1. sopmoe's venv (what you run) reads the bed's test prompts (``<bed>/data/test/<family>.jsonl``), formats them with
   sopmoe's one prompt function in the bed's format (``<bed>/config.yaml``: ``raw`` for the test bed, ``chat`` for the
   real bed) and tokenizes them. It generates greedily with HF ``generate`` in float32 from every model (the
   foundation, the MoE, the student). The batch-1 outputs are the reference, with the top-2 logit gap at each step,
   so that a divergence can be told from a near-tie. Then it times HF ``generate``.
2. ``.venv-vllm`` (``--worker``: stdlib and vLLM only) gets a request JSON of token ids and settings from step 1.
   It loads each model in ``vllm.LLM`` (float32), generates greedily from the same token ids, times that, and writes
   a result JSON. Passing token ids, not text, means that both engines see the same tokens whatever their
   transformers versions.

Step 1 then compares token ids. EOS is ignored on both sides, so every row makes exactly ``--new_tokens`` tokens,
and identity covers whatever follows an EOS too. It prints tokens/s against HF ``generate`` of the foundation at
the same batch size, measured in the same run, and writes everything to ``--out``.

Fairness on a small CPU:
- HF runs with ``--threads`` torch threads (default 1), and vLLM's worker is bound to as many cores
  (``VLLM_CPU_OMP_THREADS_BIND``), so both compute on the same number of threads.
- vLLM also runs its scheduler (engine core) in a process of its own, which polls on a further core. That is part
  of serving with vLLM, and it shows in wall time only.
- Times are wall clock, the best of ``--repeats`` after a warm-up: the work of vLLM happens in other processes, so
  this process's CPU time would miss it. HF's models are interleaved with each other, and vLLM's batch sizes with
  each other. vLLM's models run one after another, after HF's, each in an engine of its own.
- vLLM compiles the model with torch.compile unless ``--enforce_eager`` is set (the slow test sets it to save
  ~25-45 s per model; the compiled path is what ``vllm serve`` runs).

Usage::

    make vllm-venv
    .venv/bin/python benchmarks/serve_vllm.py --bed runs/demo/testbed --moe runs/moe \\
        --student runs/demo/distill/best_student --out results/serve_vllm.json [--families mixed,sop_strict] \\
        [--prompts 16] [--new_tokens 32] [--batches 1,16] [--threads 1] [--repeats 3] \\
        [--vllm_models foundation,moe,student] [--enforce_eager] [--vllm_python .venv-vllm/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def best_seconds(fns: dict, repeats: int) -> dict:
    """Best wall time of each function after one warm-up each, interleaved. ``common.best_seconds``, restated: the
    worker runs in ``.venv-vllm``, where ``common`` (which imports sopmoe) cannot be imported."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# --- step 2: the vLLM worker (.venv-vllm; stdlib and vLLM only) --------------------------------------------------
def worker(request: Path, result: Path) -> None:
    import torch
    import transformers
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    req = json.loads(request.read_text(encoding="utf-8"))
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]]
    params = SamplingParams(temperature=0.0, max_tokens=req["new_tokens"], ignore_eos=True, detokenize=False)
    out: dict = {"versions": {"vllm": vllm.__version__, "transformers": transformers.__version__,
                              "torch": torch.__version__}, "models": {}}
    for name, path in req["models"].items():
        t0 = time.perf_counter()
        llm = LLM(model=path, dtype="float32", max_model_len=req["max_model_len"], seed=0,
                  enforce_eager=req["enforce_eager"])
        load_s = time.perf_counter() - t0
        seconds, outputs = timed_generation(llm, prompts, params, req["batches"], req["repeats"])
        out["models"][name] = {"load_s": round(load_s, 2), "batches": {
            str(b): {"seconds": seconds[b], "tokens": sum(map(len, outputs[b])), "outputs": outputs[b]}
            for b in req["batches"]}}
        llm.llm_engine.engine_core.shutdown()  # its engine process goes now, not when the next engine starts
        del llm
    result.write_text(json.dumps(out), encoding="utf-8")


def timed_generation(llm, prompts: list, params, batches: list[int], repeats: int):
    """({batch: best seconds}, {batch: output token ids per prompt}) of ``llm`` answering every prompt, ``b`` at a
    time (each ``llm.generate`` call a batch)."""
    outputs: dict[int, list[list[int]]] = {}

    def run(b: int):
        def go():
            done = []
            for i in range(0, len(prompts), b):
                done += llm.generate(prompts[i:i + b], params, use_tqdm=False)
            outputs[b] = [list(r.outputs[0].token_ids) for r in done]
        return go

    return best_seconds({b: run(b) for b in batches}, repeats), outputs


# --- step 1: prompts, HF reference and timings (sopmoe's venv) ---------------------------------------------------
def bed_prompts(bed: Path, families: list[str], n: int, tokenizer) -> tuple[str, list[str]]:
    """(prompt format, ``n`` formatted prompts) spread evenly over ``families``' test files, evenly spaced in each."""
    from sopmoe_models.config import load_config
    from sopmoe_models.data import load_jsonl
    from sopmoe_models.errors import UserError
    from sopmoe_models.prompt import format_prompt

    cfg = bed / "config.yaml"
    style = load_config(cfg if cfg.is_file() else None, use_default=False).data.prompt_format
    per = -(-n // len(families))
    prompts = []
    for fam in families:
        path = bed / "data" / "test" / f"{fam}.jsonl"
        if not path.is_file():
            raise UserError(f"--bed {bed}: no {path.relative_to(bed)} (a folder built by `sopmoe testbed` or "
                            "`sopmoe realbed`, or choose --families among its data/test files)")
        exs = load_jsonl(path)
        prompts += [format_prompt(ex.input, style, tokenizer) for ex in exs[:: max(1, len(exs) // per)][:per]]
    return style, prompts[:n]


def hf_reference(model, ids: list[list[int]], new_tokens: int, pad_id: int) -> tuple[list[list[int]], list[list[float]]]:
    """Batch-1 greedy outputs of ``model`` and the top-2 logit gap at each generated step."""
    import torch

    outs, gaps = [], []
    with torch.inference_mode():
        for p in ids:
            # the mask given, never inferred: HF infers it from pad tokens, and chat prompts hold the pad token
            # (SmolLM2's pad is <|im_end|>), which an inferred mask would hide from the model
            g = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                               max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                               return_dict_in_generate=True, output_logits=True)
            outs.append(g.sequences[0, len(p):].tolist())
            top2 = torch.stack(g.logits).float()[:, 0].topk(2, dim=-1).values  # (steps, 2)
            gaps.append([round(float(x), 7) for x in top2[:, 0] - top2[:, 1]])
    return outs, gaps


def hf_timer(model, batches, new_tokens: int, pad_id: int):
    """A function generating every prompt of ``batches`` (left-padded (ids, mask) pairs) with HF ``generate``."""
    import torch

    def go():
        with torch.inference_mode():
            for ids, mask in batches:
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=pad_id)
    return go


def compare(reference: list[list[int]], got: list[list[int]], gaps: list[list[float]]) -> dict:
    """How many rows are identical; the first divergence with HF's top-2 logit gap there (a near-tie or not)."""
    same, first = 0, None
    for i, (a, b) in enumerate(zip(reference, got)):
        if a == b:
            same += 1
        elif first is None:
            step = next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            first = {"prompt": i, "step": step, "hf_top2_gap": gaps[i][step] if step < len(gaps[i]) else None}
    return {"identical": same, "of": len(reference), "first_divergence": first}


def measure(args) -> dict:
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from sopmoe_models.data import collate
    from sopmoe_models.errors import UserError
    from sopmoe_models.experts import check_model_dir, load_model, load_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    bed = Path(args.bed)
    models = {"foundation": Path(args.foundation or bed / "foundation"), "moe": Path(args.moe)}
    if args.student:
        models["student"] = Path(args.student)
    for name, path in models.items():
        try:
            check_model_dir(path, name)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
    served = [m for m in args.vllm_models.split(",") if m]
    if unknown := [m for m in served if m not in models]:
        raise UserError(f"--vllm_models: {', '.join(unknown)} not among the models given ({', '.join(models)})")
    vllm_python = Path(args.vllm_python)
    if not vllm_python.is_file():
        raise UserError(f"--vllm_python {vllm_python} does not exist; build it with `make vllm-venv`")

    tok = load_tokenizer(models["foundation"])
    families = [f for f in args.families.split(",") if f]
    style, texts = bed_prompts(bed, families, args.prompts, tok)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    batches = sorted({len(ids) if b == "all" else int(b) for b in args.batches.split(",")})

    # HF: reference outputs, then timings (the models interleaved, batch by batch)
    loaded, reference, gaps = {}, {}, {}
    for name, path in models.items():
        m = load_model(path, dtype="float32", device="cpu", role=name)
        m.generation_config.eos_token_id = None  # exactly new_tokens tokens, as vLLM's ignore_eos
        loaded[name] = m
        reference[name], gaps[name] = hf_reference(m, ids, args.new_tokens, tok.pad_token_id)
    hf_s: dict[tuple[str, int], float] = {}
    for b in batches:
        chunks = []
        for i in range(0, len(ids), b):
            enc = collate([{"input_ids": p} for p in ids[i:i + b]], tok.pad_token_id, padding_side="left")
            chunks.append((enc["input_ids"], enc["attention_mask"]))
        timed = best_seconds({n: hf_timer(m, chunks, args.new_tokens, tok.pad_token_id) for n, m in loaded.items()},
                             args.repeats)
        hf_s.update({(n, b): s for n, s in timed.items()})
    del loaded

    # vLLM, in its own interpreter
    max_model_len = max(map(len, ids)) + args.new_tokens
    request = {"models": {m: str(models[m].resolve()) for m in served}, "prompts": ids, "new_tokens": args.new_tokens,
               "batches": batches, "repeats": args.repeats, "enforce_eager": args.enforce_eager,
               "max_model_len": max_model_len}
    out = Path(args.out)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # nothing of sopmoe's venv leaks into vLLM's
    with tempfile.TemporaryDirectory(prefix="serve_vllm-") as tmp:
        req_path, res_path, log_path = (Path(tmp) / n for n in ("request.json", "result.json", "vllm.log"))
        req_path.write_text(json.dumps(request), encoding="utf-8")
        t0 = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run([str(vllm_python), str(Path(__file__).resolve()), "--worker", str(req_path),
                                   str(res_path)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        vllm_wall = time.perf_counter() - t0
        if proc.returncode != 0:
            kept = out.with_name(f"{out.stem}.vllm.log")
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, kept)
            tail = kept.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
            sys.exit(f"the vLLM worker exited {proc.returncode} (its log: {kept}); the last lines:\n" + "\n".join(tail))
        served_res = json.loads(res_path.read_text(encoding="utf-8"))

    n_tokens = len(ids) * args.new_tokens
    rows = []
    for b in batches:
        base = n_tokens / hf_s[("foundation", b)]
        for name in models:
            tps = n_tokens / hf_s[(name, b)]
            rows.append({"model": name, "engine": "hf", "batch": b, "tokens": n_tokens,
                         "seconds": round(hf_s[(name, b)], 4), "tok_s": round(tps, 1), "vs_hf_foundation": round(tps / base, 3)})
        for name in served:
            r = served_res["models"][name]["batches"][str(b)]
            tps = r["tokens"] / r["seconds"]
            rows.append({"model": name, "engine": "vllm", "batch": b, "tokens": r["tokens"],
                         "seconds": round(r["seconds"], 4), "tok_s": round(tps, 1), "vs_hf_foundation": round(tps / base, 3),
                         **compare(reference[name], r["outputs"], gaps[name])})
    vllm_rows = [r for r in rows if r["engine"] == "vllm"]
    return {
        "bed": str(bed.resolve()), "prompt_format": style, "families": families, "prompts": len(ids),
        "new_tokens": args.new_tokens, "batches": batches, "threads": args.threads, "repeats": args.repeats,
        "dtype": "float32", "clock": "wall", "eos": "ignored (exactly new_tokens per row, both engines)",
        "enforce_eager": args.enforce_eager, "models": {k: str(v.resolve()) for k, v in models.items()},
        "vllm_models": served, "vllm_load_s": {m: served_res["models"][m]["load_s"] for m in served},
        "vllm_worker_wall_s": round(vllm_wall, 1),
        "versions": {"hf": {"transformers": transformers.__version__, "torch": torch.__version__},
                     "vllm": served_res["versions"]},
        "rows": rows, "identical": all(r["identical"] == r["of"] for r in vllm_rows),
        "hf_reference": {n: reference[n] for n in models},
    }


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=(f"greedy generation, {res['prompts']} prompts of {','.join(res['families'])} "
                         f"({res['prompt_format']}), {res['new_tokens']} new tokens, float32, {res['threads']} "
                         f"thread(s), wall, best of {res['repeats']}; vLLM {res['versions']['vllm']['vllm']}"
                         + (" (eager)" if res["enforce_eager"] else " (compiled)")))
    for col in ("model", "engine", "batch", "tok/s", "÷ hf foundation", "same tokens as hf", "first divergence"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for r in res["rows"]:
        div = r.get("first_divergence")
        table.add_row(r["model"], r["engine"], str(r["batch"]), f"{r['tok_s']:.0f}", f"{r['vs_hf_foundation']:.2f}x",
                      f"{r['identical']}/{r['of']}" if "identical" in r else "",
                      "" if not div else f"prompt {div['prompt']} step {div['step']} (hf gap {div['hf_top2_gap']})")
    Console(width=120).print(table)  # not folded to 80 columns when piped
    loads = ", ".join(f"{m} {s:.0f} s" for m, s in res["vllm_load_s"].items())
    print(f"vLLM load (engine start, weights, warm-up): {loads}; identical: {'yes' if res['identical'] else 'NO'}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":  # step 2, in .venv-vllm
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bed", required=True, help="a bed folder (sopmoe testbed / realbed): data/test, config.yaml")
    ap.add_argument("--moe", required=True, help="the MoE folder (sopmoe moe)")
    ap.add_argument("--student", default=None, help="the distilled student folder (any plain HF folder)")
    ap.add_argument("--foundation", default=None, help="the one-model reference (default: <bed>/foundation)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--families", default="mixed,sop_strict", help="test files of the bed the prompts come from")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,all", help="batch sizes ('all': every prompt in one batch)")
    ap.add_argument("--threads", type=int, default=1, help="HF's torch threads and vLLM's worker cores")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vllm_models", default="foundation,moe,student", help="the models vLLM serves")
    ap.add_argument("--enforce_eager", action="store_true", help="vLLM without torch.compile (faster start)")
    ap.add_argument("--vllm_python", default=str(VLLM_PYTHON), help="the interpreter of .venv-vllm")
    args = ap.parse_args()
    if args.vllm_models and not args.student:
        args.vllm_models = ",".join(m for m in args.vllm_models.split(",") if m != "student")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sopmoe_models.errors import UserError

    try:
        res = measure(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from sopmoe_models.outputs import write_json

    write_json(args.out, res)
    print_table(res)
    print(f"results: {args.out}")


if __name__ == "__main__":  # vLLM's worker processes re-import this file: nothing may run at import time
    main()
