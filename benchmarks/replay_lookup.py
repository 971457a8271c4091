"""Benchmark (not a test): tune the lookup drafter (:mod:`sopmoe_models.lookup`) by replaying greedy answers.

Greedy speculative decoding accepts exactly the drafts' common prefix with the fused model's own greedy answer, so
once the answers are known, every drafter setting can be scored without running a model: this script decodes
``--prompts`` test prompts of a trained bed (``sopmoe demo`` / ``sopmoe realbed`` output) once with the plain 0.5/0.5
ensemble (up to EOS, ``--new_tokens`` at most), then replays them through the lookup drafter for each setting of a
small grid and prints, per setting, the tokens a row gains per fused forward, the acceptance rate, the drafts per
round and the estimated speed-up over plain fused decoding under a cost model: a verification forward of 1 + d tokens
costs ``1 + --width_cost * d`` one-token forwards (measure it with ``bench_generate.py``: a round without early stops
costs tokens-per-forward / (speed-up over plain) one-token steps). Usage::

    python benchmarks/replay_lookup.py --bed DIR [--prompts 40] [--new_tokens 128] [--width_cost 0.1]
        [--corpus FILE] [--ks 4,6,8] [--min_shares 0,0.5] [--own_shares 0.7] [--min_chances 0,0.2]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from bench_generate import (  # (its `common` import sets the offline variables first)
    LL_TASKS,
    bed_prompt_format,
)

from sopmoe_models.data import load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import load_experts
from sopmoe_models.lookup import load_lookup_drafter
from sopmoe_models.prompt import format_prompt


def answers(bed: Path, n: int, new_tokens: int) -> tuple[object, list[tuple[list[int], list[int]]]]:
    """(pair, [(prompt ids, greedy answer ids up to and with EOS)]) of the plain ensemble on ``n`` test prompts."""
    tb = bed / "testbed"
    pair = load_experts(tb / "foundation", tb / "sft", dtype="float32", device="cpu")
    model = EnsembleLM(pair, 0.5, 0.5, "prob")
    split = next(d for d in (tb / "data" / "test", tb / "data" / "eval") if d.is_dir())
    exs = [ex for f in sorted(split.glob("*.jsonl")) if f.stem in LL_TASKS for ex in load_jsonl(f)]
    style, tok = bed_prompt_format(tb), pair.tokenizer
    prompts = [format_prompt(ex.input, style, tok) for ex in exs[:: max(1, len(exs) // n)]][:n]
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        gen = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[tok.eos_token_id]).sequences[0].tolist()
        out.append((ids[0].tolist(), gen))
    return pair, out


def replay(drafter, refs, width_cost: float) -> dict[str, float]:
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
            cost += 1 + width_cost * len(drafts)
    return {"per_round": tokens / max(1, rounds), "acceptance": accepted / max(1, drafted),
            "drafts": drafted / max(1, rounds), "speedup": tokens / max(cost, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bed", required=True, help="a `sopmoe demo` / `sopmoe realbed` output folder")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--corpus", default=None, help="default: the bed's testbed/data/train/train.jsonl")
    ap.add_argument("--width_cost", type=float, default=0.1, help="cost of one more verified token, in one-token forwards")
    ap.add_argument("--ks", default="4,6,8")
    ap.add_argument("--min_shares", default="0,0.5")
    ap.add_argument("--own_shares", default="0.7")
    ap.add_argument("--min_chances", default="0,0.2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bed = Path(args.bed)
    pair, refs = answers(bed, args.prompts, args.new_tokens)
    corpus = args.corpus or bed / "testbed" / "data" / "train" / "train.jsonl"
    base = load_lookup_drafter(pair, pair.width, corpus=corpus if Path(corpus).is_file() else None)
    floats = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    grid = itertools.product([int(k) for k in args.ks.split(",")], floats(args.min_shares), floats(args.own_shares),
                             floats(args.min_chances))
    print(f"{len(refs)} answers, {sum(len(g) for _, g in refs)} tokens; corpus {corpus}; width cost {args.width_cost}")
    print(f"{'k':>3} {'min_share':>9} {'own_share':>9} {'min_chance':>10} {'tok/fwd':>8} {'accept':>7} {'drafts':>7} "
          f"{'est. ÷ plain':>12}")
    for k, ms, osh, mc in grid:
        base.num_draft_tokens, base.min_share, base.own_share, base.min_chance = k, ms, osh, mc
        r = replay(base, refs, args.width_cost)
        print(f"{k:>3} {ms:>9g} {osh:>9g} {mc:>10g} {r['per_round']:>8.2f} {r['acceptance']:>7.2f} {r['drafts']:>7.1f} "
              f"{r['speedup']:>11.2f}x")


if __name__ == "__main__":
    main()
