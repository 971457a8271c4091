"""Experiment (not a test): does the token-level router gain from richer inputs? Issue 11's router tries, on dev.

The token-level router (:mod:`sopmoe_models.routers.token_level`) reads both experts' final hidden states. This script
trains it, as ``sopmoe demo`` does (the real trainer, the bed's config, ``--epochs`` / ``--lr``), beside variants that
also read

- ``embed``: the foundation's input embedding of the current token (what the token is, apart from its context);
- ``confidence``: each expert's entropy and top log-probability at the position (who is sure);
- ``middle``: both experts' hidden states at the middle layer (less context-bound than the last);
- ``all``: the three together,

and scores each on the bed's dev split per family (``acc``, teacher forcing, as lm-eval). Every variant's epoch is
chosen by the trainer on ``data.eval_file`` (the training kinds only); ``mixed`` is scored, never trained or selected
on. The variants live in this script only: none became a router option, because none helped (``sopmoe ceiling`` says
why a per-token router has little room on these beds). Usage::

    python benchmarks/router_features.py --beds runs/demo3/seed0/testbed runs/demo3/seed1/testbed \\
        runs/demo3/seed2/testbed --json results/router_features.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets the offline variables first)
import torch
import torch.nn.functional as F
from torch import nn

from sopmoe_models.config import load_config
from sopmoe_models.data import load_jsonl
from sopmoe_models.fused import expert_logits
from sopmoe_models.outputs import write_atomic
from sopmoe_models.routers import ROUTERS, load_router, register_router
from sopmoe_models.routers.token_level import TokenLevelRouter, _hidden_size
from sopmoe_models.scoring import accuracy, score_examples
from training.router_trainer import train_router

FAMILIES = ("sop_strict", "reasoning", "mixed")
VARIANTS = {"last": (), "embed": ("embed",), "confidence": ("confidence",), "middle": ("middle",),
            "all": ("embed", "confidence", "middle")}


def confidence(z: torch.Tensor) -> torch.Tensor:
    """(B, T, W) logits -> (B, T, 2): the distribution's entropy and its top log-probability (padded rows: p = 0)."""
    lp = F.log_softmax(z.float(), -1)
    p = lp.exp()
    ent = -(p * lp.masked_fill(p == 0, 0.0)).sum(-1, keepdim=True)
    return torch.cat([ent, lp.amax(-1, keepdim=True)], -1)


class FeatureRouter(TokenLevelRouter):
    """The token-level router over more inputs per expert; ``extras`` names them (see the module docstring)."""

    extras: tuple[str, ...] = ()

    def __init__(self, pair, hidden_size: int = 64):
        super().__init__(pair, hidden_size)
        h_f, h_s = _hidden_size(pair.foundation), _hidden_size(pair.sft)
        d = h_f + h_s + ("embed" in self.extras) * h_f + ("middle" in self.extras) * (h_f + h_s)
        d += 4 * ("confidence" in self.extras)
        self.mlp = nn.Sequential(nn.Linear(d, hidden_size), nn.GELU(), nn.Linear(hidden_size, 2))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def _experts(self, input_ids, attention_mask, caches, use_cache, last_only):
        outs = []
        for i, (model, cache) in enumerate(zip(self.pair.experts, caches)):
            z, c, hs = expert_logits(model, input_ids, attention_mask, self.width, cache=cache, use_cache=use_cache,
                                     last_only=last_only, output_hidden_states=True)
            pick = (lambda h: h[:, -1:]) if last_only else (lambda h: h)
            parts = [pick(hs[-1])]
            if "middle" in self.extras:
                parts.append(pick(hs[len(hs) // 2]))
            if "embed" in self.extras and i == 0:
                parts.append(pick(hs[0]))
            feats = [F.rms_norm(h.float(), h.shape[-1:]) for h in parts]
            if "confidence" in self.extras:
                feats.append(confidence(z))
            outs.append((z, c, torch.cat(feats, -1).to(input_ids.device)))
        return outs

    def gates_from_hidden(self, h_f, h_s):
        dev, dt = self.mlp[0].weight.device, self.mlp[0].weight.dtype
        return self._forced(torch.softmax(self.mlp(torch.cat([h_f.to(dev, dt), h_s.to(dev, dt)], -1)), dim=-1))


def router_type(variant: str) -> str:
    if variant == "last":
        return "token_level"
    name = f"token_level+{variant}"
    if name not in ROUTERS:
        register_router(name)(type(name, (FeatureRouter,), {"extras": VARIANTS[variant]}))
    return name


def run_variant(bed: Path, variant: str, work: Path, epochs: int, lr: float, limit: int | None) -> dict:
    """Train ``variant`` on ``bed`` into ``work`` (a folder of its own) and score it on the bed's dev split."""
    cfg = load_config(bed / "config.yaml", {"btm.num_epochs": epochs, "btm.learning_rate": lr})
    out = work / variant
    t0 = time.perf_counter()
    summary = train_router(cfg, router_type=router_type(variant), output_dir=out, progress=False,
                           tensorboard_dir=work / "tensorboard")
    router = load_router(out / "best_router.safetensors", device="cpu", dtype=cfg.models.foundation.dtype)
    dev = Path(cfg.data.dev_dir)
    acc = {f: accuracy(score_examples(router.logprobs, router.tokenizer, load_jsonl(dev / f"{f}.jsonl")[:limit],
                                      style=cfg.data.prompt_format)) for f in FAMILIES}
    params = sum(p.numel() for p in router.parameters() if p.requires_grad)
    return {"bed": str(bed), "variant": variant, "dev_acc": acc, "best_epoch": summary.get("best_epoch"),
            "trainable_params": params, "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    beds = list(dict.fromkeys(r["bed"] for r in rows))
    lines = ["| router inputs | " + " | ".join(f"dev {f}" for f in FAMILIES) + " | trainable parameters |",
             "| --- |" + " ---: |" * (len(FAMILIES) + 1)]
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        cells = []
        for f in FAMILIES:
            xs = [r["dev_acc"][f] for r in mine]
            cells.append(f"{statistics.fmean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else ""))
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mine[0]['trainable_params']} |")
    lines.append("")
    lines.append(f"Mean ± sample standard deviation over {len(beds)} bed(s): " + ", ".join(f"`{b}`" for b in beds))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beds", nargs="+", type=Path, required=True, help="test-bed folders (holding config.yaml)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=2, help="router epochs (sopmoe demo's token_level: 2)")
    ap.add_argument("--lr", type=float, default=0.003, help="router learning rate (sopmoe demo's: 0.003)")
    ap.add_argument("--limit", type=int, default=None, help="dev examples per family (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write every row here")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    for bed in args.beds:
        if not (bed / "config.yaml").is_file():
            raise SystemExit(f"--beds {bed}: no config.yaml there (a folder written by `sopmoe testbed`)")
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="router_features_"))
    rows = []
    try:
        for i, bed in enumerate(args.beds):
            for v in variants:
                rows.append(run_variant(bed, v, work / str(i), args.epochs, args.lr, args.limit))
                r = rows[-1]
                print(f"{bed} {v}: " + ", ".join(f"{f} {r['dev_acc'][f]:.3f}" for f in FAMILIES)
                      + f" ({r['seconds']} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(table(rows)))
    if args.json:
        command = (f"python benchmarks/router_features.py --beds {' '.join(map(str, args.beds))} --variants "
                   f"{','.join(variants)} --epochs {args.epochs} --lr {args.lr}"
                   + (f" --limit {args.limit}" if args.limit else ""))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.json, json.dumps({"command": command, "rows": rows, "table": table(rows)}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
