"""Teacher-forced scoring of examples under any model that returns next-token log-probabilities.

For each example the prompt (:func:`sopmoe_models.prompt.format_prompt`) and the output are tokenised separately and
concatenated (as lm-eval does for loglikelihood requests) and one forward pass gives, per example:

- ``loglik``: Σ_t log p(y_t | prompt, y_<t) over the output tokens;
- ``n_tokens``: the number of output tokens;
- ``greedy``: every output token is the argmax of its distribution — lm-eval's ``acc`` for ``output_type:
  loglikelihood`` ("the target is the greedy continuation").

EOS is not scored by default, matching lm-eval (its continuation is the output string alone).
Aggregates: :func:`accuracy` (mean of ``greedy``) and :func:`token_perplexity` (exp(−Σ loglik / Σ n_tokens), the
per-token perplexity; lm-eval's built-in ``perplexity`` is per document, DESIGN §5).

The model is any callable ``logprob_fn(input_ids, attention_mask) -> (B, T, W)`` log-probs (W: every output row,
padded ones included), so an expert, an ensemble at some weight or a router scores the same way::

    scores = score_examples(model_logprobs(model), tokenizer, examples)   # or fused.logprobs
    accuracy(scores), token_perplexity(scores)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sopmoe_models.data import IGNORE_INDEX, Example, collate, encode_example
from sopmoe_models.fused import log_softmax_
from sopmoe_models.prompt import PromptFormat

LogprobFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Score:
    loglik: float
    n_tokens: int
    greedy: bool


def model_logprobs(model: Any) -> LogprobFn:
    """Adapt a Hugging Face causal LM to ``logprob_fn``: float32 log-softmax over all its output rows (padded ones
    included, as the model alone normalises them), computed over time chunks in place of its logits."""

    def fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return log_softmax_(model(input_ids=input_ids, attention_mask=attention_mask).logits)

    return fn


def scoring_batches(tokenizer: Any, examples: Sequence[Example], *, style: PromptFormat = "raw", batch_size: int = 32,
                    add_eos: bool = False, device: str | torch.device = "cpu"):
    """Yield ``(indices, input_ids, attention_mask, labels)`` per batch: each example's prompt and output encoded
    separately and concatenated (as lm-eval does), sorted by length so each batch pads little, right padded; labels
    are ``IGNORE_INDEX`` outside the output. ``indices`` map the batch's rows back to ``examples``."""
    encoded = [encode_example(tokenizer, ex, style=style, add_eos=add_eos) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([encoded[i] for i in idx], pad_token_id=pad, padding_side="right")
        yield (idx, *(batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")))


@torch.inference_mode()
def score_examples(
    logprob_fn: LogprobFn,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    style: PromptFormat = "raw",
    batch_size: int = 32,
    add_eos: bool = False,
    device: str | torch.device = "cpu",
) -> list[Score]:
    """Score ``examples`` in batches (right padding); one :class:`Score` per example, in order.

    The argmax is over every row ``logprob_fn`` returns, padded rows included, as lm-eval's ``acc`` takes it (a
    model whose padded row wins a position has not produced the target there).
    """
    scores: list[Score | None] = [None] * len(examples)
    for idx, ids, mask, labels in scoring_batches(tokenizer, examples, style=style, batch_size=batch_size,
                                                  add_eos=add_eos, device=device):
        logprobs = logprob_fn(ids, mask)  # (B, T, W)
        # Position t predicts token t+1.
        logprobs, targets = logprobs[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
        scored = targets != IGNORE_INDEX  # (B, T-1)
        safe = targets.clamp(min=0)
        token_ll = logprobs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        hit = logprobs.argmax(-1) == safe  # (B, T-1)
        ll = (token_ll * scored).sum(-1)
        n = scored.sum(-1)
        greedy = (hit | ~scored).all(-1)
        for j, i in enumerate(idx):
            scores[i] = Score(float(ll[j]), int(n[j]), bool(greedy[j]))
    return scores  # type: ignore[return-value]


def accuracy(scores: Sequence[Score]) -> float:
    """Fraction of examples whose whole output is the greedy continuation (lm-eval ``acc``)."""
    return sum(s.greedy for s in scores) / len(scores) if scores else float("nan")


def token_perplexity(scores: Sequence[Score]) -> float:
    """Per-token perplexity exp(−Σ loglik / Σ n_tokens) over all examples."""
    n = sum(s.n_tokens for s in scores)
    return math.exp(-sum(s.loglik for s in scores) / n) if n else float("nan")


def mean_loglik(scores: Sequence[Score]) -> float:
    """Mean per-example log-likelihood (what lm-eval's per-document perplexity exponentiates)."""
    return sum(s.loglik for s in scores) / len(scores) if scores else float("nan")
