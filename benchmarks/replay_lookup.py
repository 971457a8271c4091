"""Benchmark (not a test): tune the lookup drafter (:mod:`sopmoe_models.lookup`) by replaying greedy answers.

Greedy speculative decoding accepts exactly the drafts' common prefix with the fused model's own greedy answer, so
once the answers are known, every drafter setting can be scored without running a model: this script decodes
``--prompts`` prompts of a trained bed's ``--split`` (default dev: settings are chosen on dev, and bench_generate
times test prompts) (``sopmoe demo`` / ``sopmoe realbed`` output) once with the plain 0.5/0.5
ensemble (up to EOS, ``--new_tokens`` at most), then replays them through the lookup drafter for each setting of a
small grid and prints, per setting, the tokens a row gains per fused forward, the acceptance rate, the drafts per
round and the estimated speed-up over plain fused decoding under a cost model: a verification forward of 1 + d
tokens (d >= 1 drafts) costs ``1 + --jump + --width_cost * d`` one-token forwards, one without drafts 1.
``--time_forwards`` first times the foundation's cached forward of 1, 2, 3, 5, 9 and 13 new tokens (best of
``--repeats``, CPU seconds, ``--threads``) and prints each against one token, which is where the two constants come
from: on CPU the step from 1 to 2 tokens (matrix-vector to matrix-matrix products, an explicit causal mask) is the
jump, the growth after it the width cost. Usage::

    python benchmarks/replay_lookup.py --bed DIR [--prompts 40] [--new_tokens 128] [--jump 0.45] [--width_cost 0.05]
        [--time_forwards] [--corpus FILE] [--ks 4,6,8] [--min_shares 0,0.5] [--own_shares 0.7] [--min_chances 0,0.2]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from bench_generate import LL_TASKS  # (its `common` import sets the offline variables first)
from common import bed_prompt_format

from sopmoe_models.data import load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import load_experts
from sopmoe_models.lookup import load_lookup_drafter
from sopmoe_models.prompt import format_prompt


def answers(bed: Path, n: int, new_tokens: int, split: str = "dev") -> tuple[object, list[tuple[list[int], list[int]]]]:
    """(pair, [(prompt ids, greedy answer ids up to and with EOS)]) of the plain ensemble on ``n`` prompts of
    ``split``."""
    tb = bed / "testbed"
    pair = load_experts(tb / "foundation", tb / "sft", dtype="float32", device="cpu")
    model = EnsembleLM(pair, 0.5, 0.5, "prob")
    split = tb / "data" / split
    exs = [ex for f in sorted(split.glob("*.jsonl")) if f.stem in LL_TASKS for ex in load_jsonl(f)]
    if not exs:
        raise SystemExit(f"{split}: no prompts of {', '.join(LL_TASKS)} to replay; pass a bed's folder and --split")
    style, tok = bed_prompt_format(tb), pair.tokenizer
    prompts = [format_prompt(ex.input, style, tok) for ex in exs[:: max(1, len(exs) // n)]][:n]
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        gen = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[tok.eos_token_id]).sequences[0].tolist()
        out.append((ids[0].tolist(), gen))
    return pair, out


def time_forwards(model, repeats: int, lengths=(1, 2, 3, 5, 9, 13), past: int = 80) -> dict[int, float]:
    """Best CPU seconds of ``model``'s cached forward of each number of new tokens after ``past`` tokens."""
    import time

    from sopmoe_models.experts import cache_kwarg, output_cache

    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)
    best = dict.fromkeys(lengths, float("inf"))
    with torch.inference_mode():
        cache = output_cache(model(input_ids=torch.randint(0, vocab, (1, past), generator=g), use_cache=True))
        for _ in range(repeats):
            for t in lengths:
                ids = torch.randint(0, vocab, (1, t), generator=g)
                t0 = time.process_time()
                model(input_ids=ids, position_ids=torch.arange(past, past + t)[None], use_cache=True,
                      **{cache_kwarg(model): cache})
                best[t] = min(best[t], time.process_time() - t0)
                cache.crop(-t)
    return best


def replay(drafter, refs, width_cost: float, jump: float = 0.0) -> dict[str, float]:
    """Greedy speculative decoding of ``refs`` with ``drafter``, scored without a model (see the module docstring)."""
    rounds = tokens = drafted = accepted = 0
    cost = 0.0
    for prompt, gen in refs:
        row, t = drafter.index(prompt + gen[:1]), 1  # the first token is prefill's
        while t < len(gen):
            drafts = drafter.propose(row, drafter.num_draft_tokens)
            n = 0
            while n < len(drafts) and t + n < len(gen) and drafts[n] == gen[t + n]:
                n += 1
            got = min(n + 1, len(gen) - t)
            row.extend(gen[t : t + got])
            t += got
            rounds, tokens, drafted, accepted = rounds + 1, tokens + got, drafted + len(drafts), accepted + n
            cost += 1 + (jump + width_cost * len(drafts) if drafts else 0.0)
    return {"per_round": tokens / max(1, rounds), "acceptance": accepted / max(1, drafted),
            "drafts": drafted / max(1, rounds), "speedup": tokens / max(cost, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bed", required=True, help="a `sopmoe demo` / `sopmoe realbed` output folder")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--split", default="dev", choices=["dev", "test"], help="whose prompts to replay (default dev)")
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--corpus", default=None, help="default: the bed's testbed/data/train/train.jsonl")
    ap.add_argument("--jump", type=float, default=0.45, help="extra cost of a forward of 2 tokens over one of 1, in "
                    "one-token forwards (see --time_forwards)")
    ap.add_argument("--width_cost", type=float, default=0.05, help="cost of each further draft, in one-token forwards")
    ap.add_argument("--time_forwards", action="store_true", help="time the foundation's cached forwards first")
    ap.add_argument("--repeats", type=int, default=5, help="--time_forwards: best of this many")
    ap.add_argument("--ks", default="4,6,8")
    ap.add_argument("--min_shares", default="0,0.5")
    ap.add_argument("--own_shares", default="0.7")
    ap.add_argument("--min_chances", default="0,0.2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bed = Path(args.bed)
    pair, refs = answers(bed, args.prompts, args.new_tokens, args.split)
    if args.time_forwards:
        secs = time_forwards(pair.foundation, args.repeats)
        print("cached forward of T new tokens, against T = 1: " +
              ", ".join(f"T={t} {s / secs[1]:.2f}x" for t, s in secs.items()) + f" ({secs[1] * 1e3:.1f} ms at T = 1)")
    corpus = args.corpus or bed / "testbed" / "data" / "train" / "train.jsonl"
    base = load_lookup_drafter(pair, pair.width, corpus=corpus if Path(corpus).is_file() else None)
    floats = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    grid = itertools.product([int(k) for k in args.ks.split(",")], floats(args.min_shares), floats(args.own_shares),
                             floats(args.min_chances))
    print(f"{len(refs)} {args.split} answers, {sum(len(g) for _, g in refs)} tokens; corpus {corpus}; a verification forward costs "
          f"1 + {args.jump:g} + {args.width_cost:g} x drafts one-token forwards")
    print(f"{'k':>3} {'min_share':>9} {'own_share':>9} {'min_chance':>10} {'tok/fwd':>8} {'accept':>7} {'drafts':>7} "
          f"{'est. ÷ plain':>12}")
    for k, ms, osh, mc in grid:
        base.num_draft_tokens, base.min_share, base.own_share, base.min_chance = k, ms, osh, mc
        r = replay(base, refs, args.width_cost, args.jump)
        print(f"{k:>3} {ms:>9g} {osh:>9g} {mc:>10g} {r['per_round']:>8.2f} {r['acceptance']:>7.2f} {r['drafts']:>7.1f} "
              f"{r['speedup']:>11.2f}x")


if __name__ == "__main__":
    main()
