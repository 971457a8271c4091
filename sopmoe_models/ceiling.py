"""The ceiling of per-token routing: how much of a family *any* per-token mixture of the two experts could solve.

A token-level router, the posterior router and the ensemble at any weight all predict with a per-token
probability mixture ``p_t = g_t · p_f + (1 − g_t) · p_s``. lm-eval's ``acc`` counts an example when the greedy
token equals the reference at every output position under teacher forcing, so per example and position the question
"could some gate g ∈ [0, 1] make the reference the argmax?" has an exact answer, and an example is reachable when
every one of its positions is. The share of reachable examples is an upper bound on the ``acc`` of every such
router, however it is trained (it may pick the best gate per position after seeing the answer). It tells whether a
family is lost in the router (its accuracy is far below the ceiling) or in the experts (the ceiling itself is low).

The exact test: with a(v) = p_f(y) − p_f(v) and b(v) = p_s(y) − p_s(v) for every other token v, the reference y
is the strict argmax at gate g iff b(v) + g · (a(v) − b(v)) > 0 for all v, a set of linear constraints in g whose
solutions form an interval; the position is reachable when that interval meets [0, 1]. ``either`` is the weaker
hard-routing bound (the foundation's or the sft's own greedy token is the reference); ``mixture`` ⊇ ``either``.

Layer-level routers (which mix inside the networks) and distilled students are not bounded by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sopmoe_models.data import IGNORE_INDEX, Example
from sopmoe_models.experts import ExpertPair
from sopmoe_models.fused import expert_logits
from sopmoe_models.prompt import PromptFormat
from sopmoe_models.scoring import scoring_batches

KINDS = ("foundation", "sft", "either", "mixture")


@dataclass(frozen=True)
class CeilingScore:
    foundation: bool  # the foundation's greedy continuation is the reference (its own acc)
    sft: bool
    either: bool  # at every position one of the two experts' greedy token is the reference (hard per-token routing)
    mixture: bool  # at every position some mixture weight makes the reference the argmax (any per-token mixture)


def mixture_interval(p_f: torch.Tensor, p_s: torch.Tensor, y: torch.Tensor):
    """(N, V), (N, V) probabilities and (N,) references -> (lower, upper, flat_ok), each (N,): the reference is the
    strict argmax of g · p_f + (1 − g) · p_s exactly for lower < g < upper when flat_ok (never when not)."""
    a = p_f.gather(-1, y[:, None]) - p_f
    b = p_s.gather(-1, y[:, None]) - p_s
    other = torch.ones_like(a, dtype=torch.bool).scatter_(-1, y[:, None], False)
    d = a - b  # need b + g·d > 0 for every other token
    inf = torch.full_like(a, float("inf"))
    lower = torch.where(other & (d > 0), -b / d, -inf).amax(-1)
    upper = torch.where(other & (d < 0), b / -d, inf).amin(-1)
    flat_ok = ~(other & (d == 0) & (b <= 0)).any(-1)  # constraints that do not depend on g must hold outright
    return lower, upper, flat_ok


def mixture_reaches(p_f: torch.Tensor, p_s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: some gate g in [0, 1] makes y the strict argmax of g · p_f + (1 − g) · p_s."""
    lower, upper, flat_ok = mixture_interval(p_f, p_s, y)
    return flat_ok & (lower < upper) & (lower < 1.0) & (upper > 0.0)  # (lower, upper) meets [0, 1]


@torch.inference_mode()
def ceiling_scores(
    pair: ExpertPair,
    examples: Sequence[Example],
    *,
    style: PromptFormat = "raw",
    batch_size: int = 16,
    positions_per_chunk: int = 64,
) -> list[CeilingScore]:
    """One :class:`CeilingScore` per example, in order (teacher forcing, as lm-eval scores ``acc``)."""
    width = max(int(m.get_output_embeddings().weight.shape[0]) for m in pair.experts)
    device = pair.foundation.get_output_embeddings().weight.device
    out: list[CeilingScore | None] = [None] * len(examples)
    # no EOS scored, as lm-eval's acc
    for idx, ids, mask, labels in scoring_batches(pair.tokenizer, examples, style=style, batch_size=batch_size,
                                                  device=device):
        z = [expert_logits(m, ids, mask, width)[0][:, :-1] for m in pair.experts]  # (B, T-1, W) each
        targets = labels[:, 1:]
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        y = targets[rows, cols]
        hits = {k: torch.zeros(len(y), dtype=torch.bool, device=device) for k in KINDS}
        for lo in range(0, len(y), positions_per_chunk):
            sl = slice(lo, lo + positions_per_chunk)
            p_f, p_s = (torch.softmax(zz[rows[sl], cols[sl]].float(), dim=-1) for zz in z)
            hits["foundation"][sl] = p_f.argmax(-1) == y[sl]
            hits["sft"][sl] = p_s.argmax(-1) == y[sl]
            hits["mixture"][sl] = mixture_reaches(p_f, p_s, y[sl])
        hits["either"] = hits["foundation"] | hits["sft"]
        for j, i in enumerate(idx):
            mine = rows == j
            out[i] = CeilingScore(**{k: bool(v[mine].all()) for k, v in hits.items()})
    return out  # type: ignore[return-value]


def counts(scores: Sequence[CeilingScore]) -> dict[str, Any]:
    """``{"n": N, "foundation": k, "sft": k, "either": k, "mixture": k}`` (examples solved, per bound)."""
    return {"n": len(scores), **{k: sum(getattr(s, k) for s in scores) for k in KINDS}}
