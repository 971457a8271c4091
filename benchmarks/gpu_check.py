"""GPU check (issue 23): a Qwen3-8B-shaped random pair in bf16 on one GPU; for ``hf`` (one expert, lm-eval's own
``HFLM``), the ensemble, the token_level router and the MoE checkpoint of the pair at top-1 and top-2 (``sopmoe moe``,
through lm-eval's own ``HFLM`` and HF ``generate``), the seconds of lm-eval scoring and the
tokens/s of batch-1 and batch-8 greedy generation, with peak GPU memory; one table, and JSON.

The pair is built on the device, in bfloat16, by :func:`training.qwen3_shape.make_model` (Qwen3's real tokenizer,
151,936 output rows, Qwen3-8B's body: hidden 4096, 36 layers, 32 query / 8 key-value heads of 128, MLP 12288), with
random weights: nothing is saved or loaded (16 GB per expert), and timings and memory do not depend on the values.
``--size tiny`` is the same script on the test bed's tiny Qwen3 body (hidden 32, 2 layers), for a dry run on a CPU.

What is timed (the helpers of ``bench_generate.py`` and ``common.py``): scoring is ``loglikelihood`` on
``--requests`` requests of ``--length`` + ``--cont`` tokens of the shipped task data, through each model's lm-eval
class (``HFLM`` over the foundation, ``sopmoe_ensemble``, ``sopmoe_btm``); generation is
:func:`bench_generate.bench_generation` (HF ``generate`` on the foundation vs each fused model's own KV-cached loop,
exactly ``--new_tokens`` tokens, EOS off), batch 1 over ``--prompts_b1`` prompts and batch 8 over 8. Seconds are wall
time (CUDA synchronised), best of ``--repeats`` after a warm-up. Memory: the weights resident for that model
(``weights``: its experts' and router's parameters), and the peak CUDA allocation above all resident weights during
its scoring and its batch-8 generation (``peak extra``); ``needs`` = weights + the larger peak extra, what one GPU must
hold to run that model alone. With ``--quantization int8,int4`` (torchao; ``sopmoe[quant]``), the pair is rebuilt and
quantized in place with the same ``TorchAoConfig`` the expert loader uses, and ``hf`` and the ensemble are measured
again. ``--budget_s`` skips what is left (said in the table) so the run ends inside the GPU machine's 10 minutes.

    python benchmarks/gpu_check.py [--size qwen3-8b|tiny] [--device auto] [--json FILE] [--quantization int8,int4]

``benchmarks/gpu_check.sh`` is the prepared run for the GPU machine (carried wheels, then this script).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from pathlib import Path

import bench_generate  # the generation timer (bench_generation) and its clock
from common import DATA, best_seconds, loglikelihood_requests, weight_bytes  # sets the HF offline variables

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from sopmoe_models.data import collate, load_jsonl
from sopmoe_models.experts import ExpertPair, quantization_config, usable_vocab_size
from sopmoe_models.prompt import format_prompt
from training.qwen3_shape import make_model

SIZES = {
    "tiny": {},  # training.qwen3_shape's own body: hidden 32, 2 layers
    "qwen3-8b": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960},
}
GiB = 2**30
# What each size measures unless a flag says otherwise: qwen3-8b fits the GPU machine's 10 minutes with room to spare;
# tiny is a dry run of every code path on a CPU (CI) in about a minute.
DEFAULTS = {
    "qwen3-8b": {"requests": 64, "length": 512, "cont": 32, "score_batch": 8, "new_tokens": 64, "prompts_b1": 2},
    "tiny": {"requests": 2, "length": 16, "cont": 2, "score_batch": 2, "new_tokens": 2, "prompts_b1": 1},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pair(tok, size: str, device: torch.device) -> ExpertPair:
    """Two random experts of ``size`` in bfloat16, made on ``device`` (the sft an independent draw: the same cost)."""
    f, s = (make_model(tok, seed, shape=SIZES[size], device=device, dtype=torch.bfloat16) for seed in (0, 1))
    for m in (f, s):
        m.requires_grad_(False)
    return ExpertPair(f, s, tok, usable_vocab_size(tok, f, s))


def quantize_(pair: ExpertPair, quantization: str, device: torch.device) -> None:
    """Quantize both experts in place with the ``TorchAoConfig`` that :func:`sopmoe_models.experts.load_model` passes
    to ``from_pretrained``, on the linear layers it converts (every one but the output layer; embeddings are not
    linear layers)."""
    from torchao.quantization import quantize_ as ao_quantize

    qcfg = quantization_config(quantization, device, torch.bfloat16, "foundation")
    for m in pair.experts:
        head = m.get_output_embeddings()
        ao_quantize(m, qcfg.quant_type, filter_fn=lambda mod, _fqn, head=head: isinstance(mod, torch.nn.Linear)
                    and mod is not head)
        m.sopmoe_quantization = quantization


def peak_extra(fn, device: torch.device) -> float | None:
    """Peak CUDA allocation above what is allocated before ``fn`` runs once, in GiB (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / GiB


def lm_eval_models(pair: ExpertPair, names: list[str], batch_size: int) -> dict:
    """lm-eval's class of each model: ``HFLM`` over the foundation object, and sopmoe's adapters over the pair."""
    from lm_eval.models.huggingface import HFLM

    from sopmoe_models.adapters.base import quiet_preloaded_warnings
    from sopmoe_models.adapters.btm import BTMLMEval
    from sopmoe_models.adapters.ensemble import EnsembleLMEval

    lms = {}
    for name in names:
        if name == "hf":
            with quiet_preloaded_warnings():
                lms[name] = HFLM(pretrained=pair.foundation, tokenizer=pair.tokenizer, backend="causal",
                                 batch_size=batch_size, softmax_dtype="float32")  # as sopmoe evaluate runs hf
        elif name == "ensemble":
            lms[name] = EnsembleLMEval(pair=pair, foundation_weight=0.5, sft_weight=0.5, mix="prob",
                                       batch_size=batch_size)
        elif name == "token_level":
            from sopmoe_models.routers import build_router

            torch.manual_seed(0)
            router = build_router("token_level", pair, hidden_size=64)  # untrained: the same cost as a trained one
            lms[name] = BTMLMEval(router, batch_size=batch_size)
    return lms


def moe_rows(pair: ExpertPair, args, device: torch.device) -> list[dict]:
    """The MoE checkpoint of the pair (``sopmoe moe``'s ``Qwen3MoeForCausalLM``: the two FFNs as experts, attention
    once), built on the device from the config ``sopmoe moe`` writes, with random weights (the cost does not depend on
    them), served top-1 and top-2: lm-eval's own ``HFLM`` and HF ``generate``, as an engine runs it (the ratios are
    against the ``hf`` row, measured the same way)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoConfig, AutoModelForCausalLM

    from sopmoe_models.adapters.base import quiet_preloaded_warnings
    from sopmoe_models.moe import FORMS, inference_cost, moe_config, set_top_k

    dense = pair.foundation.config.to_dict()
    cfg = moe_config(dense, FORMS["qwen3"], top_k=2, aux_loss_coef=0.0)
    config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval().requires_grad_(False)
    reqs = loglikelihood_requests(pair.tokenizer, args.requests, args.length, args.cont)
    prompts = generation_prompts()
    pad = pair.tokenizer.pad_token_id
    rows = []
    with quiet_preloaded_warnings():
        lm = HFLM(pretrained=model, tokenizer=pair.tokenizer, backend="causal", batch_size=args.score_batch,
                  softmax_dtype="float32")
    for k in (1, 2):
        set_top_k(model, k)
        row = {"model": f"moe top-{k}", "quantization": "bf16", "flops_x": inference_cost(cfg, k),
               "weights_gib": weight_bytes(model) / GiB}

        def score():
            lm.loglikelihood(reqs, disable_tqdm=True)
            sync(device)
        row["score_s"] = best_seconds({"s": score}, args.repeats, time.perf_counter)["s"]
        row["score_extra_gib"] = peak_extra(score, device)
        for batch, ps in ((1, prompts[: args.prompts_b1]), (8, prompts)):
            enc = [{"input_ids": pair.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in ps]
            batches = [{k_: v.to(device) for k_, v in collate(enc[i:i + batch], pad, padding_side="left").items()}
                       for i in range(0, len(enc), batch)]

            def gen(batches=batches):
                with torch.inference_mode():
                    for ids in batches:
                        model.generate(**ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                       do_sample=False, pad_token_id=pad)
                sync(device)
            secs = best_seconds({"g": gen}, args.repeats, time.perf_counter)["g"]
            row[f"tok_s_b{batch}"] = len(ps) * args.new_tokens / secs
            if batch == 8:
                row["gen_extra_gib"] = peak_extra(gen, device)
        row["needs_gib"] = needs_gib(row)
        rows.append(row)
    return rows


def fused_models(lms: dict) -> dict:
    """The fused models among ``lms`` (their own generate loop); ``hf`` is bench_generation's reference."""
    return {name: lm.fused for name, lm in lms.items() if name != "hf"}


def measure(pair: ExpertPair, names: list[str], args, device: torch.device, label: str) -> list[dict]:
    """Scoring seconds, generation tok/s at batch 1 and 8, and memory of each model in ``names`` on ``pair``."""
    lms = lm_eval_models(pair, names, args.score_batch)
    reqs = loglikelihood_requests(pair.tokenizer, args.requests, args.length, args.cont)

    def scorer(lm):
        def go():
            lm.loglikelihood(reqs, disable_tqdm=True)
            sync(device)
        return go

    score_s = best_seconds({n: scorer(lm) for n, lm in lms.items()}, args.repeats, time.perf_counter)
    rows = {n: {"model": n, "quantization": label, "score_s": score_s[n],
                "weights_gib": weight_bytes(*([pair.foundation] if n == "hf" else [*pair.experts, lm.fused])) / GiB}
            for n, lm in lms.items()}
    for n, lm in lms.items():
        rows[n]["score_extra_gib"] = peak_extra(scorer(lm), device)
    prompts = generation_prompts()
    bench_generate.CLOCK = time.perf_counter  # wall time: the GPU works while the CPU waits
    fused = fused_models(lms)
    for batch, ps in ((1, prompts[: args.prompts_b1]), (8, prompts)):
        gen = bench_generate.bench_generation(pair, fused, {}, ps, batch, args.new_tokens, args.repeats, eos=False)
        for r in gen:
            rows[r["fused"]][f"tok_s_b{batch}"] = r["tok/s"]
            rows["hf"][f"tok_s_b{batch}"] = r["hf"]
    for n in lms:
        m = pair.foundation if n == "hf" else fused[n]
        enc = [{"input_ids": pair.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        ids = {k: v.to(device) for k, v in collate(enc, pair.tokenizer.pad_token_id, padding_side="left").items()}
        go = _generate_once(m, ids, args.new_tokens, pair.tokenizer.pad_token_id, hf=n == "hf")
        with torch.inference_mode():
            rows[n]["gen_extra_gib"] = peak_extra(go, device)
        rows[n]["needs_gib"] = needs_gib(rows[n])
    return list(rows.values())


def generation_prompts() -> list[str]:
    """The 8 generation prompts every row uses: spread over the four families' default data."""
    examples = [ex for f in ("sop_strict", "reasoning", "mixed", "eval") for ex in load_jsonl(DATA / f"{f}.jsonl")]
    return [format_prompt(ex.input) for ex in examples[::97]][:8]


def needs_gib(row: dict) -> float | None:
    """GPU memory the row's model needs: its weights plus the larger peak above them (scoring or generation)."""
    extras = [x for x in (row["score_extra_gib"], row.get("gen_extra_gib")) if x is not None]
    return row["weights_gib"] + max(extras) if extras else None


def _generate_once(model, ids: dict, new_tokens: int, pad: int, hf: bool):
    """One batch-8 greedy generation of exactly ``new_tokens`` tokens: HF ``generate`` or the fused model's loop."""
    def go():
        if hf:
            return model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        return model.generate(ids["input_ids"], ids["attention_mask"], max_new_tokens=new_tokens, eos_token_id=[])
    return go


def table(rows: list[dict], title: str, notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, caption="\n".join(notes) or None)
    cols = [("model", "model"), ("quantization", "weights"), ("score_s", "score s"), ("tok_s_b1", "tok/s b1"),
            ("tok_s_b8", "tok/s b8"), ("weights_gib", "weights GiB"), ("score_extra_gib", "peak extra score GiB"),
            ("gen_extra_gib", "peak extra gen b8 GiB"), ("needs_gib", "needs GiB")]
    for _, head in cols:
        t.add_column(head, justify="left" if head in ("model", "weights") else "right")
    hf = {r["quantization"]: r for r in rows if r["model"] == "hf"}
    for r in rows:
        ref = hf.get(r["quantization"], {})
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if isinstance(v, float):
                cell = f"{v:.3f}" if key == "score_s" else f"{v:.2f}" if key.endswith("gib") else f"{v:.1f}"
                if key.startswith(("score_s", "tok_s")) and r["model"] != "hf" and ref.get(key):
                    cell += f" ({v / ref[key]:.2f}x)"
                cells.append(cell)
            else:
                cells.append("-" if v is None else str(v))
        t.add_row(*cells)
    Console(width=200).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="qwen3-8b")
    ap.add_argument("--device", default="auto", help="auto = cuda:0 when present, else cpu")
    ap.add_argument("--models", default="hf,ensemble,token_level,moe")
    ap.add_argument("--quantization", default="", help="also measure hf and the ensemble quantized: int8,int4")
    ap.add_argument("--requests", type=int, default=None, help="loglikelihood requests scored")
    ap.add_argument("--length", type=int, default=None, help="context tokens per request")
    ap.add_argument("--cont", type=int, default=None, help="continuation tokens per request")
    ap.add_argument("--score_batch", type=int, default=None)
    ap.add_argument("--new_tokens", type=int, default=None)
    ap.add_argument("--prompts_b1", type=int, default=None, help="prompts decoded one at a time (batch 1)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up (best is kept)")
    ap.add_argument("--budget_s", type=float, default=480, help="skip the quantized rows once this much has passed")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    t0 = time.perf_counter()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from sopmoe_models.experts import load_tokenizer, resolve_device
    from training.qwen3_tokenizer import fetch

    device = resolve_device(args.device)
    tok = load_tokenizer(fetch())
    names = [n for n in args.models.split(",") if n]
    notes: list[str] = []
    pair = build_pair(tok, args.size, device)
    built = time.perf_counter() - t0
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    versions = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                "lm_eval": __import__("lm_eval").__version__}

    def save(rows: list[dict]) -> None:  # after every stage: a run cut short still leaves what it measured
        if args.json:
            record = {"size": args.size, "device": gpu, "versions": versions, "args": vars(args), "rows": rows,
                      "notes": notes, "seconds": time.perf_counter() - t0}
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    t1 = time.perf_counter()
    rows = measure(pair, [n for n in names if n != "moe"], args, device, "bf16")
    save(rows)
    if "moe" in names:  # the MoE checkpoint of the pair (issue 21), after the pair's own rows
        try:
            rows += moe_rows(pair, args, device)
            gc.collect()
        except Exception as e:  # said in the table's notes; the other rows stand
            notes.append(f"moe: not measured ({type(e).__name__}: {' '.join(str(e).split())[:160]})")
        save(rows)
    per_model = (time.perf_counter() - t1) / max(1, len(names))
    for q in [q for q in args.quantization.split(",") if q]:
        if time.perf_counter() - t0 + built + 2 * per_model > args.budget_s:  # rebuild + hf + ensemble
            notes.append(f"{q}: skipped (would end past --budget_s {args.budget_s:.0f} s)")
            continue
        try:
            quantization_config(q, device, torch.bfloat16, "foundation")  # int4 off CUDA, no torchao: said at once
            pair = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            pair = build_pair(tok, args.size, device)
            quantize_(pair, q, device)
        except Exception as e:  # said in the table's notes; the other rows stand
            notes.append(f"{q}: not measured ({type(e).__name__}: {' '.join(str(e).split())[:160]})")
            continue
        rows += measure(pair, [n for n in names if n in ("hf", "ensemble")], args, device, q)
        save(rows)
    save(rows)
    elapsed = time.perf_counter() - t0
    title = (f"sopmoe GPU check: {args.size} pair on {gpu} (bf16 activations; {args.requests} requests of "
             f"{args.length}+{args.cont} tokens, batch {args.score_batch}; {args.new_tokens} new tokens; best of "
             f"{args.repeats} after a warm-up; built in {built:.0f} s, all in {elapsed:.0f} s; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")")
    table(rows, title, notes)


if __name__ == "__main__":
    main()
