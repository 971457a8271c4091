"""The interface every fused model shares, and KV-cached generation written once for all of them.

A fused model holds an :class:`~sopmoe_models.experts.ExpertPair` (frozen, not registered as submodules, so
``parameters()`` and ``state_dict()`` hold only what the fusion itself learns) and implements one method::

    forward(input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput

``input_ids`` (B, T_new) are the *new* tokens; ``attention_mask`` (B, T_past + T_new) covers past and new tokens
(left padding = 0s on the left), exactly like transformers. ``state`` is whatever the previous call returned in
``FusedOutput.state`` (per-expert KV caches, running likelihoods...), so decoding feeds one token per step and
never re-runs the prefix. Output ``logprobs`` are next-token log-probabilities (B, T_new, W) in float32 over the
experts' full output width W (padded rows included: the parity rule of :mod:`sopmoe_models.experts`); ``gates``
(B, T_new, E) or (B, T_new, L, E) the weight each expert got (None when fixed).

Memory: at a 152k vocabulary one (B, T, W) float32 tensor is 0.6 MB per position (8 x 512 tokens: 2.5 GB), so the
full-sequence paths never stack experts or keep several such copies: :func:`expert_logits` returns each expert's
logits in its own dtype; :func:`log_softmax_`, :func:`target_logprobs` and the ensemble's and routers' mixing
upcast, normalise and mix them over slices of ``CHUNK_ELEMENTS`` elements along time, writing into one float32
output (an expert's own float32 logits when they may be overwritten). Values are exactly those of the unchunked
operations (each is row-wise).

:func:`FusedLM.generate` reuses transformers' logits processors (temperature, top-p) and EOS stopping criterion and
adds the loop over a fused model's cached forward plus :class:`StopStrings` (lm-eval's text rule for stop strings).
With ``draft=`` (a :class:`~sopmoe_models.speculative.Drafter`) it decodes speculatively instead
(:mod:`sopmoe_models.speculative`): same greedy tokens, same sampling distribution. That needs one more method of
each fused model, :meth:`FusedLM.commit_state`, which rolls a state back to a per-row prefix of the tokens the last
forward fed (the rejected draft tokens): KV caches are cropped (``Cache.crop``), and per-position state (posterior
likelihoods, layer_level's context sums) is taken at each row's last kept token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sopmoe_models.experts import ExpertPair, cache_kwarg, output_cache


@dataclass
class FusedOutput:
    logprobs: torch.Tensor  # (B, T_new, V) float32
    state: Any = None  # pass back as forward(state=...) for incremental decoding
    gates: torch.Tensor | None = None  # (B, T_new, E) or (B, T_new, L, E); weight on (foundation, sft)


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # (B, N) generated ids only, pad after a row finished
    texts: list[str]  # decoded, cut at the first stop string
    gates: torch.Tensor | None = None  # (B, N, ...) gate of each generated token, when the model routes
    speculation: Any = None  # SpeculationStats of a speculative decode (draft tokens proposed/accepted), else None


def position_ids_from_mask(attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Positions of the last ``new_tokens`` columns, counting only real (mask = 1) tokens: (B, new_tokens)."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos[:, -new_tokens:]


CHUNK_ELEMENTS = 1 << 22  # elements of one (B, chunk, W) temporary: 16 MiB in float32 (27 positions of one row at W = 152k)


def time_chunks(x: torch.Tensor, budget: int | None = None) -> list[slice]:
    """Slices along dim 1 of ``x`` (B, T, W) with about ``budget`` (default ``CHUNK_ELEMENTS``) elements each."""
    budget = budget or CHUNK_ELEMENTS
    b, t, w = x.shape[0], x.shape[1], x.shape[-1]
    step = max(1, budget // max(1, b * w))
    return [slice(i, min(i + step, t)) for i in range(0, t, step)]


def float_out(z: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """Where float32 results go: ``z`` itself when it is float32 and may be overwritten, else a new buffer."""
    return z if overwrite and z.dtype == torch.float32 else torch.empty(z.shape, dtype=torch.float32, device=z.device)


def log_softmax_(z: torch.Tensor, *, overwrite: bool = True) -> torch.Tensor:
    """float32 log_softmax over the last dim, computed over time chunks (in place in ``z`` when allowed)."""
    if z.dim() != 3 or torch.is_grad_enabled() and z.requires_grad:
        return F.log_softmax(z.float(), dim=-1)
    out = float_out(z, overwrite)
    for sl in time_chunks(z):
        out[:, sl] = F.log_softmax(z[:, sl].float(), dim=-1)
    return out


def target_logprobs(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(z)[target] in float32 without a (B, T, W) log-softmax: z (B, T, W) logits, targets (B, T) ids."""
    if torch.is_grad_enabled() and z.requires_grad:
        return z.float().gather(-1, targets[..., None]).squeeze(-1) - z.float().logsumexp(-1)
    out = torch.empty(targets.shape, dtype=torch.float32, device=z.device)
    for sl in time_chunks(z):
        zc = z[:, sl].float()
        out[:, sl] = zc.gather(-1, targets[:, sl, None]).squeeze(-1) - zc.logsumexp(-1)
    return out


def expert_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    width: int,
    *,
    cache: Any = None,
    use_cache: bool = False,
    last_only: bool = False,
    output_hidden_states: bool = False,
) -> tuple[torch.Tensor, Any, Any]:
    """Run one expert on new tokens; returns (logits (B, T, width), cache, hidden states).

    The logits keep the model's dtype (upcast to float32 chunk by chunk by whoever normalises them: a bf16 expert's
    (B, T, W) logits are half the size of their float32 copy) and every row the model has; an expert with fewer
    rows than ``width`` is padded with -inf (probability 0). They are the caller's to overwrite.
    """
    device = model.get_output_embeddings().weight.device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "use_cache": use_cache,
        "output_hidden_states": output_hidden_states,
    }
    if bool(mask.all()):
        # No padding and no holes: the same attention as the explicit mask (transformers skips an all-ones mask for
        # SDPA when it can, and builds the plain causal one otherwise), without the per-call mask bookkeeping, which
        # is a fifth of a decoding step of a small model.
        n = mask.shape[1]
        kwargs["position_ids"] = torch.arange(n - ids.shape[1], n, device=device).expand(ids.shape[0], -1)
    else:
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = position_ids_from_mask(mask, ids.shape[1])
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    if last_only:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    logits = out.logits.to(input_ids.device)
    if logits.shape[-1] < width:
        logits = F.pad(logits, (0, width - logits.shape[-1]), value=float("-inf"))
    elif logits.shape[-1] > width:
        raise ValueError(f"expert has {logits.shape[-1]} output rows, more than the pair's width {width}")
    return logits, output_cache(out) if use_cache else None, out.hidden_states if output_hidden_states else None


class FusedLM(nn.Module):
    """Base class: subclasses implement :meth:`forward`; generation and scoring helpers come for free."""

    name = "fused"

    def __init__(self, pair: ExpertPair):
        super().__init__()
        self.pair = pair  # a dataclass, not a Module: the experts stay out of parameters()/state_dict()

    @property
    def tokenizer(self):
        return self.pair.tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary (ids that are tokens)."""
        return self.pair.vocab_size

    @property
    def width(self) -> int:
        """Width of the next-token distributions: every output row of the experts, padded rows included."""
        return self.pair.width

    @property
    def device(self) -> torch.device:
        return self.pair.foundation.get_output_embeddings().weight.device

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput:
        raise NotImplementedError

    def commit_state(self, state: Any, keep: torch.Tensor, n_new: int) -> Any:
        """Roll ``state`` back after a forward that fed ``n_new`` tokens: row b keeps the first ``keep[b]`` of them.

        ``keep`` (B,) is in [1, n_new]. Returns a state that continues after each row's kept tokens, for a caller that
        drops the last ``n_new - keep.max()`` columns of its attention mask and zeroes, per row, the columns between
        ``keep[b]`` and ``keep.max()`` (holes no later token attends to; positions count only mask-1 columns). The
        default handles a state that is a tuple of KV caches (None for an expert that is not run); a fused model whose
        state holds more (running sums, last log-probs) overrides it. Needed by speculative decoding only.
        """
        if isinstance(state, tuple) and all(c is None or hasattr(c, "crop") for c in state):
            return crop_caches(state, n_new - int(keep.max()))
        raise NotImplementedError(f"{type(self).__name__} does not implement commit_state(); it cannot decode "
                                  "speculatively (pass no draft=)")

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence next-token log-probs (B, T, W), as scoring and lm-eval need."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self(input_ids, attention_mask).logprobs

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | tuple[str, ...] = (),
        eos_token_id: int | list[int] | None = None,
        draft: Any = None,
    ) -> GenerationResult:
        """Batched, left-padded, KV-cached decoding; greedy when ``temperature == 0``.

        ``draft``: a :class:`~sopmoe_models.speculative.Drafter` to decode speculatively (identical greedy tokens,
        the same sampling distribution; :mod:`sopmoe_models.speculative`). None: one fused forward per token.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[0] > 1 and not bool(attention_mask[:, -1].all()):
            raise ValueError("batched generation needs left padding (the last column must be real tokens)")
        d = self.decoding(temperature, top_p, seed, stop, eos_token_id)
        if draft is not None:
            from sopmoe_models.speculative import speculative_generate

            return speculative_generate(self, draft, input_ids, attention_mask, d, max_new_tokens)

        seq, mask = input_ids, attention_mask
        prompt_len = input_ids.shape[1]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new_tokens, gate_steps = [], []
        out = self(seq, mask, use_cache=True, last_only=True)  # prefill: the whole prompt once
        for step in range(max_new_tokens):
            # (B, W): argmax and sampling see every row, as the expert alone does (parity rule)
            scores = out.logprobs[:, -1, :]
            if d.sample:
                scores = d.warpers(seq, scores)
                probs = F.softmax(scores, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=d.generator).squeeze(1).to(seq.device)
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, d.pad), nxt)
            new_tokens.append(nxt)
            if out.gates is not None:
                gate_steps.append(out.gates[:, -1])
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
            # Only the generated tokens: a stop string must not match across the prompt boundary (a chat
            # prompt ending in "\n" plus a first "\n" is not "\n\n"), as lm-eval's own stop criteria.
            if len(d.criteria):
                done = done | d.criteria(seq[:, prompt_len:], scores).to(done.device)
            if d.stopper is not None:
                done = done | d.stopper(seq[:, prompt_len:], done)
            if step == max_new_tokens - 1 or bool(done.all()):
                break  # no forward for a token nobody will read
            out = self(nxt[:, None], mask, state=out.state, use_cache=True, last_only=True)  # one token per step
        gen_ids = torch.stack(new_tokens, dim=1) if new_tokens else seq[:, :0]
        texts = [cut_at_stop(t, d.stop) for t in self._decode(gen_ids, d.eos_ids, d.pad)]
        gates = torch.stack(gate_steps, dim=1) if gate_steps else None
        return GenerationResult(gen_ids, texts, gates)

    def decoding(self, temperature: float, top_p: float, seed: int | None, stop, eos_token_id) -> Decoding:
        """What both decoding loops share: EOS ids, pad id, sampling warpers and generator, stop criteria."""
        from transformers.generation import (
            EosTokenCriteria,
            LogitsProcessorList,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        tok = self.tokenizer
        eos = eos_token_id if eos_token_id is not None else tok.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        sample = temperature > 0
        warpers = LogitsProcessorList()
        if sample:
            warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
        criteria = StoppingCriteriaList()
        if eos_ids:
            criteria.append(EosTokenCriteria(eos_token_id=eos_ids))
        stop = [s for s in stop if s]
        stopper = StopStrings(tok, stop) if stop else None
        gen = torch.Generator(device="cpu").manual_seed(seed) if (sample and seed is not None) else None
        return Decoding(eos_ids, pad, sample, warpers, criteria, stopper, gen, stop)

    def _decode(self, gen_ids: torch.Tensor, eos_ids: list[int], pad: int) -> list[str]:
        texts = []
        for row in gen_ids.tolist():
            cut = next((row[:i] for i, t in enumerate(row) if t in eos_ids), row)
            texts.append(self.tokenizer.decode(cut, skip_special_tokens=True))
        return texts


@dataclass
class Decoding:
    """Per-call decoding settings (:meth:`FusedLM.decoding`)."""

    eos_ids: list[int]
    pad: int
    sample: bool
    warpers: Any  # LogitsProcessorList: temperature, top-p (empty when greedy)
    criteria: Any  # StoppingCriteriaList: EOS
    stopper: StopStrings | None
    generator: torch.Generator | None
    stop: list[str]


def crop_caches(caches: tuple, n: int) -> tuple:
    """Drop the last ``n`` tokens of every KV cache in ``caches`` (None entries: experts that were not run)."""
    if n:
        for c in caches:
            if c is None:
                continue
            if not getattr(c, "is_croppable", True):
                raise ValueError(f"{type(c).__name__} cannot be rolled back (a sliding window past its size?); "
                                 "speculative decoding needs croppable caches")
            c.crop(-n)
    return caches


class StopStrings:
    """Stop a row once one of ``stop`` appears in the text of its generated tokens (lm-eval's own rule).

    Not transformers' ``StopStringCriteria``: it builds its token table by decoding every vocabulary entry after the
    probe prefix "abcdef" and raises when the vocabulary lacks those characters (the test bed's character-level
    tokenizer has no lowercase letters). Here each step decodes only the last ``window`` generated tokens of the
    unfinished rows; every token yields at least one byte, so the window always covers a just-completed stop string.
    """

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.window = max(len(s.encode("utf-8")) for s in self.stop) + 2

    def __call__(self, generated: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """``generated`` (B, N) ids so far, ``done`` (B,) bool -> (B,) bool: rows whose text now holds a stop."""
        hit = torch.zeros_like(done)
        rows = (~done).nonzero().flatten().tolist()
        if not rows:
            return hit
        tails = self.tokenizer.batch_decode(generated[rows, -self.window:].tolist())
        for row, text in zip(rows, tails):
            if any(s in text for s in self.stop):
                hit[row] = True
        return hit

    def first_hit(self, tokens: list[int], start: int) -> int | None:
        """The shortest length n in (start, len(tokens)] at which ``tokens[:n]`` is stopped by this rule, or None.

        For decoding loops that append several tokens per step (speculation): the same verdict the one-token loop
        reaches after each token, so the row ends at the same token.
        """
        if not self._hit(tokens):
            return None
        for n in range(start + 1, len(tokens) + 1):
            if self._hit(tokens[:n]):
                return n
        return len(tokens)

    def _hit(self, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens[-self.window:])
        return any(s in text for s in self.stop)


def cut_at_stop(text: str, stop: list[str] | tuple[str, ...]) -> str:
    """Text up to (not including) the earliest stop string."""
    idx = [text.find(s) for s in stop if s and s in text]
    return text[: min(idx)] if idx else text


def check_weights(foundation_weight: float, sft_weight: float) -> tuple[float, float]:
    """Validate and normalise a pair of mixture weights."""
    for name, w in (("foundation_weight", foundation_weight), ("sft_weight", sft_weight)):
        if not isinstance(w, (int, float)) or w != w or w < 0 or w == float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    total = float(foundation_weight) + float(sft_weight)
    if total <= 0:
        raise ValueError("foundation_weight and sft_weight are both 0; at least one must be positive")
    return foundation_weight / total, sft_weight / total
