"""Choosing an MoE checkpoint on dev data (issue 21: "every choice is made on dev: attention source, top-k, init,
learning rate, epoch").

The epoch is chosen by the trainer (dev loss, :mod:`training.distill_trainer`). Everything else is a grid of trained
checkpoints, each scored here on the dev split of the families the training data covers (never ``mixed``, never
test) at each top-k it could be served with: accuracy (lm-eval's ``acc``: the whole reference is the greedy
continuation, :mod:`sopmoe_models.scoring`) per family, and their mean decides. Ties go to the cheaper checkpoint
(fewer experts per token), then to the grid's order. The whole table is kept, so the choice can be audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sopmoe_models.data import load_jsonl
from sopmoe_models.scoring import accuracy, model_logprobs, score_examples

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One trained checkpoint of the grid and its settings (``attention``, ``gate_init``, ``learning_rate``...)."""

    path: Path
    settings: dict[str, Any]
    dev: dict[int, dict[str, float]] = field(default_factory=dict)  # top_k -> {family: acc, "mean": ...}


@torch.inference_mode()
def dev_accuracy(model_dir: str | Path, dev_dir: str | Path, families: tuple[str, ...], *, style: str, dtype: str,
                 top_k: int | None = None, batch_size: int = 16, limit: int | None = None) -> dict[str, float]:
    """Dev accuracy per family (and their ``mean``) of the checkpoint at ``model_dir``, served with ``top_k``
    experts per token when it is an MoE (None: as its config says)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"num_experts_per_tok": top_k} if top_k is not None else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype), **extra).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    out = {}
    for fam in families:
        rows = load_jsonl(Path(dev_dir) / f"{fam}.jsonl")[:limit]
        out[fam] = round(accuracy(score_examples(model_logprobs(model), tok, rows, style=style,
                                                 batch_size=batch_size)), 4)
    out["mean"] = round(sum(out[f] for f in families) / len(families), 4)
    return out


def choose(candidates: list[Candidate], top_ks: tuple[int, ...], dev_dir: str | Path, families: tuple[str, ...], *,
           style: str, dtype: str, limit: int | None = None) -> tuple[Candidate, int, list[dict[str, Any]]]:
    """Score every candidate at every top-k on dev; return the best (candidate, top_k) and the table."""
    table = []
    for c in candidates:
        for k in top_ks:
            c.dev[k] = dev_accuracy(c.path, dev_dir, families, style=style, dtype=dtype, top_k=k, limit=limit)
            table.append({**c.settings, "top_k": k, "path": str(c.path), **c.dev[k]})
            log.info("moe dev %s top-%d: %s", c.settings, k, c.dev[k])
    order = {id(c): i for i, c in enumerate(candidates)}
    best_c, best_k = max(((c, k) for c in candidates for k in top_ks),
                         key=lambda ck: (ck[0].dev[ck[1]]["mean"], -ck[1], -order[id(ck[0])]))
    return best_c, best_k, table
