"""Ensemble of the two experts' next-token distributions (weights per model).

``mix="prob"`` is a probability mixture, log(w_f p_f + w_s p_s), computed stably with logsumexp over
log w + log p (the BTM / c-BTM ensemble, Li et al. 2022, Gururangan et al. 2023).
``mix="logit"`` is a product of experts, log_softmax(w_f z_f + w_s z_s) (PackLLM / proxy-tuning style).
Weights are normalised; an expert with weight 0 is not run at all (a mixture with it is exactly the other one).
Both mixes are over the experts' full output width, padded rows included, each expert normalised over all its rows
(the parity rule, :mod:`sopmoe_models.experts`): weights (1, 0) give exactly the foundation, as ``--model hf`` does.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from sopmoe_models.experts import ExpertPair
from sopmoe_models.fused import (
    FusedLM,
    FusedOutput,
    check_weights,
    expert_logits,
    float_out,
    log_softmax_,
    time_chunks,
)

Mix = Literal["prob", "logit"]


def mix_logits(logits: list[torch.Tensor | None], weights: tuple[float, ...], mix: Mix, *,
               overwrite: bool = False) -> torch.Tensor:
    """Mix per-expert logits (each (B, T, W), any dtype) into float32 log-probs (B, T, W).

    ``None`` entries are experts with weight 0. Each expert is normalised over all its rows first (``prob``) or its
    logits are mixed as they are (``logit``); with one expert of weight 1 either mix returns exactly that expert's
    log_softmax, bit for bit (the parity rule). Without autograd the work runs over time chunks
    (:func:`~sopmoe_models.fused.time_chunks`) into one float32 output: the first expert's own logits when
    ``overwrite`` allows and they are float32, else a new buffer; no (B, T, W) temporary beyond that output.
    """
    if mix not in ("prob", "logit"):
        raise ValueError(f"mix must be 'prob' or 'logit', got {mix!r}")
    pairs = [(z, w) for z, w in zip(logits, weights) if w > 0]
    if pairs[0][0].dim() != 3 or torch.is_grad_enabled() and any(z.requires_grad for z, _ in pairs):
        return _mix(pairs, mix)  # autograd (or not (B, T, W)): whole tensors, nothing in place
    first = pairs[0][0]
    out = float_out(first, overwrite)
    for sl in time_chunks(first):
        out[:, sl] = _mix([(z[:, sl], w) for z, w in pairs], mix)
    return out


def _mix(pairs: list[tuple[torch.Tensor, float]], mix: Mix) -> torch.Tensor:
    """The mixture of (logits, weight) pairs (weights > 0, summing to 1) as float32 log-probs."""
    if mix == "prob":
        out = None
        for z, w in pairs:
            term = F.log_softmax(z.float(), dim=-1)
            if w != 1:
                term = term + math.log(w)
            # Pairwise logaddexp, not logsumexp over a stacked leading dim: same value, no stacked copy, and several
            # times faster on CPU (a reduction over the outer dim is a slow path).
            out = term if out is None else torch.logaddexp(out, term)
        return out
    z = None
    for zi, w in pairs:
        z = zi.float() * w if z is None else z + w * zi.float()
    return F.log_softmax(z, dim=-1)


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
                    model, input_ids, attention_mask, self.width,
                    cache=cache, use_cache=use_cache, last_only=last_only,
                )
                logits.append(z)
                new_caches.append(c)
            mixed = mix_logits(logits, self.weights, self.mix, overwrite=True)  # the logits are ours to reuse
        return FusedOutput(mixed, tuple(new_caches) if use_cache else None)


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
            out = tuple(log_softmax_(expert_logits(m, input_ids, mask, self.pair.width)[0]) for m in self.pair.experts)
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
            # overwrite=False: the cached log-probs serve the sweep's other points
            return FusedOutput(mix_logits([z if w > 0 else None for z, w in zip(lp, self.weights)],
                                          self.weights, self.mix, overwrite=False))
