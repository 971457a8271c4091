"""Ensemble of the two experts' next-token distributions (weights per model).

``mix="prob"`` is a probability mixture, log(w_f p_f + w_s p_s), computed stably with logsumexp over
log w + log p (the BTM / c-BTM ensemble, Li et al. 2022, Gururangan et al. 2023).
``mix="logit"`` is a product of experts, log_softmax(w_f z_f + w_s z_s) (PackLLM / proxy-tuning style).
Weights are normalised; an expert with weight 0 is not run at all (a mixture with it is exactly the other one).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from sopmoe_models.experts import ExpertPair
from sopmoe_models.fused import FusedLM, FusedOutput, check_weights, expert_logits

Mix = Literal["prob", "logit"]


def mix_logits(logits: list[torch.Tensor], weights: tuple[float, ...], mix: Mix) -> torch.Tensor:
    """Mix per-expert logits (each (B, T, V)) into log-probs; ``None`` entries are experts with weight 0."""
    pairs = [(z, w) for z, w in zip(logits, weights) if w > 0]
    # Without autograd, accumulate in place: peak memory ~ one extra (B, T, V) per expert, not a stacked copy
    # (for scoring a 150k vocabulary these are the largest tensors there are).
    inplace = not (torch.is_grad_enabled() and any(z.requires_grad for z, _ in pairs))
    if mix == "prob":
        out = None
        for z, w in pairs:
            term = F.log_softmax(z, dim=-1)
            if w != 1:
                term = term.add_(math.log(w)) if inplace else term + math.log(w)
            # Pairwise logaddexp, not logsumexp over a stacked leading dim: same value, no (E, B, T, V) copy, and
            # several times faster on CPU (a reduction over the outer dim is a slow path).
            out = term if out is None else torch.logaddexp(out, term, out=out) if inplace else torch.logaddexp(out, term)
        return out
    if mix == "logit":
        z = None
        for zi, w in pairs:
            if z is None:
                z = zi * w
            else:
                z = z.add_(zi, alpha=w) if inplace else z + w * zi
        return F.log_softmax(z, dim=-1)
    raise ValueError(f"mix must be 'prob' or 'logit', got {mix!r}")


class EnsembleLM(FusedLM):
    name = "ensemble"

    def __init__(self, pair: ExpertPair, foundation_weight: float = 0.5, sft_weight: float = 0.5, mix: Mix = "prob"):
        super().__init__(pair)
        if mix not in ("prob", "logit"):
            raise ValueError(f"mix must be 'prob' or 'logit', got {mix!r}")
        self.weights = check_weights(foundation_weight, sft_weight)
        self.mix = mix

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        caches = state if state is not None else (None, None)
        logits, new_caches = [], []
        with torch.inference_mode():  # nothing here trains; callers needing autograd .clone() the output
            for model, cache, w in zip(self.pair.experts, caches, self.weights):
                if w == 0:
                    logits.append(None)
                    new_caches.append(None)
                    continue
                z, c, _ = expert_logits(
                    model, input_ids, attention_mask, self.vocab_size,
                    cache=cache, use_cache=use_cache, last_only=last_only,
                )
                logits.append(z)
                new_caches.append(c)
        return FusedOutput(mix_logits(logits, self.weights, self.mix), tuple(new_caches) if use_cache else None)
