"""Benchmark (not a test): router training steps and router generation against plain Hugging Face, same run.

For each router type (posterior, token_level, layer_level) on the same batch of training examples:

- training: one router step (``training.router_trainer.batch_loss`` forward, backward, AdamW step on the router's
  parameters) ÷ the two experts' forward passes alone (both experts under ``torch.inference_mode()``, full logits),
  the floor any router over two frozen experts pays. ``posterior`` has no step (nothing to learn): its row is the
  forward it uses for the prior. Target (issue 5): token_level <= 1.2x.
- generation: greedy, exactly ``--new_tokens`` new tokens (EOS disabled on both sides), batch 1 and 8 (left
  padded): tokens/s of :meth:`Router.generate` (both experts, per-expert KV caches) ÷ HF ``generate`` on one expert.
  Target: >= 0.4x (0.5x is the two-forward limit on one device).

Models: the test bed's experts from ``--config`` (e.g. /work/tb0/config.yaml), else a random pair of the test bed's
shape (``--shape testbed``) or a larger one (``--shape large``). Timings are the best of ``--repeats`` interleaved
runs after a warm-up, with ``--threads`` torch threads (default 1: the machine is shared), in this process's CPU
seconds by default (other jobs on a shared machine stretch wall time, and more so for the longer runs; ``--clock
wall`` to see). Usage::

    python benchmarks/bench_router.py [--config /work/tb0/config.yaml] [--shape testbed] [--batch_size 8]
        [--new_tokens 32] [--repeats 5] [--threads 1] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import best_seconds, random_pair, task_data_file  # sets the HF offline variables

from sopmoe_models.data import collate, encode_example, load_jsonl
from sopmoe_models.experts import load_experts
from sopmoe_models.fused import expert_logits
from sopmoe_models.prompt import format_prompt
from sopmoe_models.routers import build_router
from training.router_trainer import batch_loss

TYPES = ("posterior", "token_level", "layer_level")


def training_fns(pair, routers: dict, batch: dict) -> dict:
    def experts_forward():
        with torch.inference_mode():
            for model in pair.experts:
                expert_logits(model, batch["input_ids"], batch["attention_mask"], pair.width)

    fns = {"two expert forwards": experts_forward}
    for name, router in routers.items():
        if not router.trainable:
            def forward(router=router):
                with torch.inference_mode():
                    router(batch["input_ids"], batch["attention_mask"])
            fns[name] = forward
            continue
        opt = torch.optim.AdamW(router.parameters(), lr=1e-4)

        def step(router=router, opt=opt):
            parts = batch_loss(router, batch, 0.01, 0.01)
            parts["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns[name] = step
    return fns


def generation_fns(pair, routers: dict, ids, mask, new_tokens: int) -> dict:
    model = pair.foundation
    model.generation_config.eos_token_id = None  # exactly new_tokens tokens on both sides

    def hf():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=pair.tokenizer.pad_token_id)
        assert out.shape[1] == ids.shape[1] + new_tokens

    fns = {"HF generate (1 expert)": hf}
    for name, router in routers.items():
        def go(router=router):
            out = router.generate(ids, mask, max_new_tokens=new_tokens, eos_token_id=[])
            assert out.sequences.shape[1] == new_tokens

        fns[name] = go
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="sopmoe YAML (models + data.train_file); default: random pair")
    ap.add_argument("--shape", default="testbed", choices=["testbed", "large"], help="random pair shape")
    ap.add_argument("--batch_size", type=int, default=8, help="training batch")
    ap.add_argument("--router_hidden_size", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU seconds (robust to other jobs on a shared machine); wall: elapsed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    if args.config:
        from harness.config import load_config

        cfg = load_config(args.config)
        dirs, data, label = (cfg.models.foundation.path, cfg.models.sft.path), Path(cfg.data.train_file), args.config
    else:
        dirs, data = random_pair(Path(tmp.name), args.shape), task_data_file(Path(tmp.name))
        label = f"random {args.shape} pair"
    pair = load_experts(*dirs, dtype="float32", device="cpu")
    tok = pair.tokenizer
    torch.manual_seed(0)
    routers = {t: build_router(t, pair, **({} if t == "posterior" else {"hidden_size": args.router_hidden_size}))
               for t in TYPES}
    examples = load_jsonl(data)
    step = max(1, len(examples) // args.batch_size)
    chosen = examples[::step][: args.batch_size]  # spread over the file (files are often ordered by family)
    batch = collate([encode_example(tok, ex, max_length=256) for ex in chosen], tok.pad_token_id)
    n_params = sum(p.numel() for p in pair.foundation.parameters())
    print(f"router benchmark: {label}; experts {n_params / 1e6:.2f}M params each, vocab {pair.vocab_size}, "
          f"{args.threads} thread(s), {args.clock} time, best of {args.repeats}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    train = best_seconds(training_fns(pair, routers, batch), args.repeats, clock)
    base = train["two expert forwards"]
    print(f"\ntraining step, batch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens")
    print(f"| {'':<22} | {'ms':>8} | {'vs 2 expert fwd':>15} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 17}|")
    for name, t in train.items():
        note = " (forward only)" if name == "posterior" else ""
        print(f"| {name + note:<22} | {1000 * t:8.1f} | {t / base:14.2f}x |")
    tl = train["token_level"] / base
    print(f"target token_level <= 1.20x: {'met' if tl <= 1.2 else 'NOT met'} ({tl:.2f}x)")

    prompts = [format_prompt(ex.input) for ex in chosen]
    worst = float("inf")
    for gen_batch in (1, 8):
        enc = [{"input_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in (prompts * 8)[:gen_batch]]
        b = collate(enc, tok.pad_token_id, padding_side="left")
        secs = best_seconds(generation_fns(pair, routers, b["input_ids"], b["attention_mask"], args.new_tokens),
                            args.repeats, clock)
        n = gen_batch * args.new_tokens
        hf = n / secs["HF generate (1 expert)"]
        print(f"\ngeneration, batch {gen_batch}, {args.new_tokens} new tokens (greedy)")
        print(f"| {'':<22} | {'tokens/s':>9} | {'vs HF':>7} |")
        print(f"|{'-' * 24}|{'-' * 11}|{'-' * 9}|")
        for name, t in secs.items():
            print(f"| {name:<22} | {n / t:9.1f} | {n / t / hf:6.2f}x |")
            if name in routers:
                worst = min(worst, n / t / hf)
    print(f"\ntarget generation >= 0.40x HF (every router, both batches): {'met' if worst >= 0.4 else 'NOT met'} "
          f"(worst {worst:.2f}x)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
