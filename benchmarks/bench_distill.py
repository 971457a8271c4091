"""Benchmark (not a test): one distillation training step against plain HF fine-tuning, same batch, same run.

Three steps on the same batch, each with its own copy of the student (foundation init) and its own AdamW:

- ``plain HF``: ``student(input_ids, attention_mask, labels=labels).loss`` backward + step (the baseline);
- ``cached teacher``: the teacher's top-k rows read from a real teacher cache (``training.distill_teacher.get_cache``,
  built once before timing) + KD/CE loss (:func:`training.kd_losses.distill_loss`) + backward + step;
- ``live teacher``: the ensemble teacher's forward (two experts, inference mode) + the full-vocabulary KD/CE loss
  + backward + step.

The three are timed round-robin (one step of each per round, so load on the shared machine hits them alike) and
the median per step is reported with ratios to plain HF. Target (DESIGN §8): cached <= 1.3x plain fine-tuning.
Models: the test bed's experts from ``--config`` (e.g. /work/tb0/config.yaml), else a random pair of the test bed's
shape (``--shape testbed``) or a larger one (``--shape large``) saved to a temporary folder. Usage::

    python benchmarks/bench_distill.py [--config /work/tb0/config.yaml] [--shape testbed] [--batch_size 8]
        [--steps 15] [--topk 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import random_pair, task_data_file  # sets the HF offline variables

from sopmoe_models.data import collate, encode_example, load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import load_experts
from training.distill_teacher import LiveTeacher, get_cache
from training.kd_losses import distill_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="sopmoe YAML (models + data.train_file); default: random pair")
    ap.add_argument("--shape", default="testbed", choices=["testbed", "large"], help="random pair shape")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15, help="timed rounds (after 2 warm-up rounds)")
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    tmp = tempfile.TemporaryDirectory()
    if args.config:
        from harness.config import load_config

        cfg = load_config(args.config)
        dirs, data = (cfg.models.foundation.path, cfg.models.sft.path), Path(cfg.data.train_file)
        label, w = args.config, (cfg.ensemble.foundation_weight, cfg.ensemble.sft_weight)
    else:
        dirs = random_pair(Path(tmp.name), args.shape, noise=None)  # two independent random experts
        data = task_data_file(Path(tmp.name))
        label, w = f"random {args.shape} pair", (0.5, 0.5)
    pair = load_experts(*dirs, dtype="float32", device="cpu")
    teacher = EnsembleLM(pair, *w, mix="prob")
    tok = pair.tokenizer
    feats = [encode_example(tok, ex, max_length=256) for ex in load_jsonl(data)[: args.batch_size]]
    idx = list(range(len(feats)))
    batch = collate(feats, tok.pad_token_id)
    cache = get_cache(teacher, feats, data_file=data, k=args.topk, temperature=2.0, cache_root=Path(tmp.name) / "cache",
                      pad_id=tok.pad_token_id, batch_size=args.batch_size, accelerator=Accelerator(cpu=True))
    live = LiveTeacher(teacher)
    base = AutoModelForCausalLM.from_pretrained(str(dirs[0]), dtype=torch.float32)

    def make_step(kind: str):
        student = copy.deepcopy(base).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-5)

        def step():
            if kind == "plain":
                loss = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
            else:
                target = cache(idx, batch) if kind == "cached" else live(idx, batch)
                logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = distill_loss(logits, batch["labels"], target, temperature=2.0).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    steps = {k: make_step(k) for k in ("plain", "cached", "live")}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.steps + 2):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in base.parameters())
    print(f"distillation step vs plain HF fine-tuning: {label}; student {n_params / 1e6:.2f}M params, vocab "
          f"{pair.vocab_size}, batch {len(feats)} x {batch['input_ids'].shape[1]} tokens, top-k {args.topk}, "
          f"{args.threads} thread(s), median of {args.steps}")
    print(f"| {'step':<15} | {'ms/step':>8} | {'vs plain HF':>11} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 13}|")
    names = {"plain": "plain HF", "cached": "cached teacher", "live": "live teacher"}
    for k in ("plain", "cached", "live"):
        print(f"| {names[k]:<15} | {1000 * med[k]:8.1f} | {med[k] / med['plain']:10.2f}x |")
    ratio = med["cached"] / med["plain"]
    print(f"target cached <= 1.30x plain: {'met' if ratio <= 1.3 else 'NOT met'} ({ratio:.2f}x)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
