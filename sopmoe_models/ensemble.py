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


class ExpertLogprobCache:
    """Both experts' log-probs for each scored batch, shared by ensembles over one pair (a weight sweep).

    Every ensemble weight mixes the same two distributions, so a sweep needs each expert's forward once per batch;
    the later points only mix. Both mixes can use the cached log-softmaxed values: ``prob`` mixes log-probs anyway,
    and ``logit`` is invariant to a per-row shift of each expert's logits (log_softmax(w_f z_f + w_s z_s) =
    log_softmax(w_f (z_f - lse_f) + w_s (z_s - lse_s))). Entries are keyed by the batch's token ids (and mask);
    at most ``max_bytes`` are kept (beyond that batches are recomputed), since a 150k vocabulary makes them large.
    """

    def __init__(self, pair: ExpertPair, max_bytes: int = 2 << 30):
        self.pair = pair
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._store: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        import hashlib

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        key = (tuple(input_ids.shape), hashlib.blake2b(input_ids.cpu().numpy().tobytes()).hexdigest(),
               None if attention_mask is None else hashlib.blake2b(mask.cpu().numpy().tobytes()).hexdigest())
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self.misses += 1
        with torch.inference_mode():
            out = tuple(F.log_softmax(expert_logits(m, input_ids, mask, self.pair.vocab_size)[0], dim=-1)
                        for m in self.pair.experts)
        size = sum(t.numel() * t.element_size() for t in out)
        if self.bytes + size <= self.max_bytes:
            self._store[key] = out
            self.bytes += size
        return out


class CachedEnsembleLM(EnsembleLM):
    """:class:`EnsembleLM` whose full-sequence scoring reads both experts from an :class:`ExpertLogprobCache`;
    generation (cached decoding) runs the experts as usual."""

    def __init__(self, cache: ExpertLogprobCache, foundation_weight: float = 0.5, sft_weight: float = 0.5,
                 mix: Mix = "prob"):
        super().__init__(cache.pair, foundation_weight, sft_weight, mix)
        self.cache = cache

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput:
        if use_cache or state is not None or last_only:
            return super().forward(input_ids, attention_mask, state, use_cache, last_only)
        lp = self.cache.logprobs(input_ids, attention_mask)
        with torch.inference_mode():
            return FusedOutput(mix_logits([z if w > 0 else None for z, w in zip(lp, self.weights)],
                                          self.weights, self.mix))
