"""Speculative decoding of any fused model: a cheap drafter proposes k tokens, the fused model checks them in one
cached forward per expert and keeps the longest prefix it agrees with, plus its own next token (DESIGN §10).

Speculative decoding: Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative Decoding"
(Algorithm 1); Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling"
(Algorithm 2). Applied to an ensemble (the fused model is the target): "Speculative Ensemble" / CoS, ICML 2025.

One round, per row, with ``last`` the newest token the fused model has not yet read::

    draft    d_1..d_k ~ q(· | x, last, d_<i)            k drafter forwards of one token each
    verify   p_1..p_{k+1} = fused(x, last, d_1..d_k)      one forward of k + 1 tokens per expert
    greedy   n = #leading i with d_i = argmax p_i;  emit argmax p_1..argmax p_{n+1}   (= the drafts, then one more)
    sampled  accept d_i while u_i < p_i(d_i) / q_i(d_i)   (u_i ~ U(0, 1));  n = #leading accepts
             emit d_1..d_n, then y ~ norm(max(p_{n+1} - q_{n+1}, 0)) if n < k, else y ~ p_{k+1}

Greedy output is the fused model's own greedy decode token for token (every emitted token is the fused argmax given
exactly the tokens before it; only float rounding of a k+1-token forward against a one-token forward separates
them, as it separates any two batch shapes); sampled output has exactly the fused model's distribution (the
rejection rule above, Leviathan et al. Theorem 1), with the fused model's temperature/top-p applied to p and q alike.

Batches: rows accept different lengths. Each row keeps its own: after a round the caches are cropped to the longest
row's kept tokens (``Cache.crop``) and a shorter row's rejected columns stay in the cache as *holes*, masked out of
attention (mask 0) and skipped by the positions (position ids count only mask-1 columns), the same mechanism left
padding uses. So no row waits for the batch minimum (whose expected accepted length falls quickly with batch size),
at the cost of cache columns that no token attends to (at most k per row and round). At batch 1 there are never holes.
State that is not a KV cache (posterior's running likelihoods, layer_level's context sums) is taken per row at its
last kept token: :meth:`~sopmoe_models.fused.FusedLM.commit_state`.

Vocabulary: every distribution here is over the fused model's full output width W, padded lm_head rows included
(the parity rule of :mod:`sopmoe_models.experts`): the fused argmax and sampling see every row, as the one-token loop
does, and the drafter's logits are laid on the same W rows (:meth:`Drafter.step`), so a padded id the fused model
would emit is emitted here too, and can be drafted and accepted.

The drafter reads only accepted tokens: the tokens it drafted and that were rejected are cropped or masked the same
way. When a row accepts all k drafts, the drafter has not read d_k yet; the next round feeds it before ``last``
(a two-column step, the first column a hole for rows without such a token).

``num_draft_tokens`` k is fixed (``schedule="constant"``) or adapted per round (``"heuristic"``, transformers'
``num_assistant_tokens_schedule``: k + 2 after a round where the row accepted all k, else k - 1, at least 1; in a
batch, k + 2 only while the rows that accepted all k would gain more from another draft than it costs the batch). ``confidence`` (transformers' ``assistant_confidence_threshold``)
ends a round's drafting early once the drafter's own probability of every row's draft is below it.
Lookup drafting (:class:`~sopmoe_models.lookup.LookupDrafter`, ``draft=lookup``) uses the same loop without a drafter
model: each row's drafts are copied from its own text and an optional corpus, so rows draft different lengths (0..k);
the round's k is the longest, shorter rows are padded with filler columns that ``lengths`` keeps from being accepted
(:func:`verify_greedy`, :func:`verify_sampled`), and the drafts are a point-mass q for rejection sampling.
Why not transformers' own assisted generation (``generate(assistant_model=...)``): it drives a ``PreTrainedModel``
whose cache is one transformers ``Cache``, and refuses batches ("assisted generate is only supported for
batch_size = 1", transformers 5.24); a fused model is two models plus router state, decoded in left-padded batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from sopmoe_models.experts import (
    ExpertMismatchError,
    ExpertPair,
    cache_kwarg,
    check_same_tokenizer,
    load_model,
    load_tokenizer,
    output_cache,
)
from sopmoe_models.fused import (
    Decoding,
    FusedLM,
    GenerationResult,
    crop_caches,
    cut_at_stop,
    position_ids_from_mask,
)

log = logging.getLogger(__name__)

Schedule = Literal["constant", "heuristic"]
SCHEDULES = ("constant", "heuristic")
MAX_DRAFT_TOKENS = 16  # the heuristic schedule's ceiling


@dataclass
class SpeculationStats:
    """Counts over the rows still generating. ``acceptance_rate`` = accepted / drafted (the fraction of draft tokens
    the fused model kept); ``tokens_per_round`` = tokens a row gained per verification forward (1 = no speedup)."""

    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # of them, accepted by the fused model
    rounds: int = 0  # verification forwards (each one forward per expert, for the whole batch)
    row_rounds: int = 0  # rounds summed over the rows still generating in them
    tokens: int = 0  # tokens those rows gained in them (accepted drafts + the fused model's own token)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_round(self) -> float | None:
        return self.tokens / self.row_rounds if self.row_rounds else None

    def add(self, other: SpeculationStats) -> SpeculationStats:
        for name in ("drafted", "accepted", "rounds", "row_rounds", "tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict[str, Any]:
        rate, per = self.acceptance_rate, self.tokens_per_round
        return {"drafted": self.drafted, "accepted": self.accepted, "rounds": self.rounds, "tokens": self.tokens,
                "acceptance_rate": None if rate is None else round(rate, 4),
                "tokens_per_round": None if per is None else round(per, 3)}

    def describe(self) -> str:
        if not self.drafted:
            return "no draft tokens proposed"
        return (f"acceptance {self.acceptance_rate:.3f} ({self.accepted}/{self.drafted} draft tokens), "
                f"{self.tokens_per_round:.2f} tokens per fused forward")


@dataclass
class Drafter:
    """A causal LM that shares the fused model's tokenizer, and how many tokens it drafts per round.

    ``stats`` accumulates every decode it drafted for (the lm-eval adapters and ``sopmoe generate`` report it).
    """

    model: torch.nn.Module
    width: int  # the fused model's output width W: its distributions cover every expert row, padded ones included
    num_draft_tokens: int = 8
    schedule: Schedule = "heuristic"
    path: str | None = None
    confidence: float = 0.0  # end a round's drafting once every row's draft has drafter probability below this
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    # what the drafter reads for an id past its input embeddings (a padded id of a wider fused model): a token it has
    # (load_drafter: the tokenizer's unk, else pad). Drafts stay proposals, so outputs are unchanged either way.
    substitute_id: int = 0

    def __post_init__(self):
        if int(self.num_draft_tokens) < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {self.num_draft_tokens!r}")
        self.num_draft_tokens = int(self.num_draft_tokens)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"draft schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= float(self.confidence) < 1.0:
            raise ValueError(f"draft confidence must be in [0, 1), got {self.confidence!r}")
        self.device = self.model.get_output_embeddings().weight.device
        self._cache_kw = cache_kwarg(self.model)
        self.input_rows = int(self.model.get_input_embeddings().weight.shape[0])
        if not 0 <= int(self.substitute_id) < self.input_rows:
            raise ValueError(f"substitute_id {self.substitute_id!r} is not an id the drafter can read")

    def describe(self) -> dict[str, Any]:
        return {"draft": self.path, "num_draft_tokens": self.num_draft_tokens, "draft_schedule": self.schedule,
                "draft_confidence": self.confidence, **self.stats.as_dict()}

    def step(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any, plain: bool) -> tuple[torch.Tensor, Any]:
        """Read ``ids`` (B, T) after ``cache``; returns next-token logits (B, W) float32 and the cache.

        The parity rule (:mod:`sopmoe_models.experts`) on the drafter's side: its distribution is its softmax over
        all its output rows, padded ones included, laid on the fused model's W rows (ids past the drafter's own rows
        get -inf; rows past W, ids the fused model never emits, are dropped), so drafts, the draft distribution q
        and the fused distributions p are over the same ids. The fused model may emit padded ids past the drafter's
        input embeddings (a narrower drafter): it reads ``substitute_id`` there instead. Its drafts then come from a
        slightly different context, which costs acceptance only: greedy verification keeps the fused argmax, and
        rejection sampling is exact for any draft distribution that depends on the prefix alone.

        ``plain``: ``mask`` is all ones (no padding, no holes), so no mask is passed (cheaper, same attention)."""
        n, t = mask.shape[1], ids.shape[1]
        ids = ids.to(self.device)
        if self.input_rows < self.width:
            ids = ids.masked_fill(ids >= self.input_rows, int(self.substitute_id))
        kw: dict[str, Any] = {"input_ids": ids, "use_cache": True, "logits_to_keep": 1}
        if plain:
            kw["position_ids"] = torch.arange(n - t, n, device=self.device).expand(ids.shape[0], -1)
        else:
            m = mask.to(self.device)
            kw["attention_mask"] = m
            kw["position_ids"] = position_ids_from_mask(m, t)
        if cache is not None:
            kw[self._cache_kw] = cache
        out = self.model(**kw)
        z = out.logits[:, -1].float()
        if z.shape[-1] < self.width:
            z = F.pad(z, (0, self.width - z.shape[-1]), value=float("-inf"))
        return z[:, : self.width].to(mask.device), output_cache(out)


def resolve_draft(draft: str | None, student: str | Path | None = None) -> str | None:
    """A drafter folder from ``draft``: a model folder, or ``auto`` = ``student`` (the distilled student folder the
    factory decides, :func:`sopmoe_models.factory.student_path`) when it exists, else None (with a warning);
    ``lookup``: the word itself (lookup drafting, :mod:`sopmoe_models.lookup`). ``None``/``""``/``none``: no
    speculation."""
    if draft is None or str(draft).strip().lower() in ("", "none", "off"):
        return None
    if str(draft).strip().lower() == "lookup":
        return "lookup"
    if str(draft).strip().lower() == "auto":
        if student is not None and (Path(student) / "config.json").is_file():
            return str(student)
        log.warning("draft=auto: no distilled student at %s (run `sopmoe distill`); decoding without a drafter", student)
        return None
    path = Path(draft).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"drafter {path} is not a transformers model folder (no config.json); pass a causal "
                                "LM that shares the experts' tokenizer, e.g. <distill.output_dir>/best_student, or auto")
    return str(path)


def load_drafter(
    path: str | Path,
    pair: ExpertPair,
    *,
    num_draft_tokens: int = 8,
    schedule: Schedule = "heuristic",
    confidence: float = 0.0,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Drafter:
    """Load a drafter (frozen, eval) next to ``pair``: its tokenizer must be the experts' (same ids, same specials)
    and its output layer must cover their vocabulary. Default device and dtype: the foundation's."""
    ref = pair.foundation.get_output_embeddings().weight
    model = load_model(path, dtype=dtype or ref.dtype, device=device or str(ref.device), role="drafter")
    try:
        check_same_tokenizer(pair.tokenizer, load_tokenizer(path), "experts'", "drafter's")
    except ExpertMismatchError as e:
        raise ExpertMismatchError(f"drafter {path}: {e}") from None
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < pair.vocab_size:
        raise ExpertMismatchError(f"drafter {path} has {rows} output rows, fewer than the experts' {pair.vocab_size} tokens")
    tok = pair.tokenizer
    substitute = tok.unk_token_id if tok.unk_token_id is not None else tok.pad_token_id
    return Drafter(model, pair.width, num_draft_tokens, schedule, str(path), confidence, substitute_id=int(substitute or 0))


def _warp(d: Decoding, scores: torch.Tensor) -> torch.Tensor:
    """The fused model's sampling distribution from log-probs or logits (..., W): temperature, top-p, softmax."""
    shape = scores.shape
    flat = scores.reshape(-1, shape[-1])
    return F.softmax(d.warpers(None, flat), dim=-1).reshape(shape)


def _sample(probs: torch.Tensor, d: Decoding) -> torch.Tensor:
    """One token per row of ``probs`` (B, W) with the call's generator (on CPU, as the plain loop samples)."""
    return torch.multinomial(probs.cpu(), 1, generator=d.generator).squeeze(1).to(probs.device)


def verify_greedy(drafts: torch.Tensor, logprobs: torch.Tensor,
                  lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: ``drafts`` (B, k), fused ``logprobs`` (B, k + 1, W) at [last, d_1..d_k].

    Returns (n (B,) accepted drafts per row, tokens (B, k + 1)): the first n + 1 of ``tokens`` are what the row emits
    (its accepted drafts, which equal the fused argmax, then the fused argmax after them). The argmax is over all W
    rows, padded ones included, as in :meth:`FusedLM.generate`'s one-token loop (the parity rule). ``lengths`` (B,):
    row b drafted only its first ``lengths[b]`` tokens (a lookup drafter's rows draft different lengths; the columns
    after them are filler), so at most that many are accepted."""
    target = logprobs.argmax(-1)  # (B, k + 1)
    n = (drafts == target[:, :-1]).long().cumprod(1).sum(1)
    if lengths is not None:
        n = torch.minimum(n, lengths)
    return n, target


def verify_sampled(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor, d: Decoding,
                   lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative rejection sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, Algorithm 2).

    ``drafts`` (B, k) drawn from the drafter's (warped) distributions ``q`` (B, k, W); ``p`` (B, k + 1, W) the fused
    model's (warped) distributions at [last, d_1..d_k]. Draft i is accepted with probability min(1, p_i(d_i)/q_i(d_i));
    at the first rejection the row draws from the residual norm(max(p_i - q_i, 0)), after k acceptances from p_{k+1}.
    Returns (n (B,), tokens (B, k + 1)) as :func:`verify_greedy`. ``lengths`` (B,): as :func:`verify_greedy`; row b's
    q must be 0 past its ``lengths[b]`` drafts, so after them the row samples from p itself. A deterministic drafter
    (lookup) passes one-hot q: accept d with probability min(1, p(d)), else sample p with d removed.
    """
    b, k = drafts.shape
    idx = drafts[..., None]
    p_d, q_d = p[:, :k].gather(-1, idx).squeeze(-1), q.gather(-1, idx).squeeze(-1)  # (B, k)
    u = torch.rand(b, k, generator=d.generator).to(p.device)
    n = (u * q_d < p_d).long().cumprod(1).sum(1)  # u < p/q without dividing (q_d > 0: d was drawn from q)
    if lengths is not None:
        n = torch.minimum(n, lengths)
    rows = torch.arange(b, device=p.device)
    p_n = p[rows, n]  # (B, W)
    q_n = torch.cat([q, torch.zeros_like(p[:, :1])], 1)[rows, n]  # q_{k+1} = 0: the residual is p_{k+1} itself
    resid = (p_n - q_n).clamp(min=0)
    mass = resid.sum(-1, keepdim=True)
    # mass 0 only where p_n = q_n, where rejection has probability 0; guard the float case with p_n itself
    y = _sample(torch.where(mass > 0, resid / mass.clamp(min=1e-30), p_n), d)
    tokens = torch.cat([drafts, y[:, None]], 1).scatter(1, n[:, None], y[:, None])
    return n, tokens


@torch.inference_mode()
def speculative_generate(
    model: FusedLM,
    drafter: Drafter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    d: Decoding,
    max_new_tokens: int,
) -> GenerationResult:
    """:meth:`FusedLM.generate` with a drafter: the same result (greedy tokens, texts, gates of the generated
    tokens; the sampling distribution), plus ``result.speculation`` (:class:`SpeculationStats`)."""
    B, dev = input_ids.shape[0], input_ids.device
    stats = SpeculationStats()
    rows: list[list[int]] = [[] for _ in range(B)]
    gate_rows: list[list[torch.Tensor]] = [[] for _ in range(B)]
    done = [False] * B

    def emit(b: int, chunk: list[int], gates: torch.Tensor | None) -> None:
        """Append ``chunk`` to row b, cut where the one-token loop would have stopped it (EOS, stop string, length)."""
        start = len(rows[b])
        chunk = chunk[: max_new_tokens - start]
        cut = next((i + 1 for i, t in enumerate(chunk) if t in d.eos_ids), None)
        if cut is not None:
            chunk = chunk[:cut]
        rows[b].extend(chunk)
        if d.stopper is not None:
            hit = d.stopper.first_hit(rows[b], start)
            if hit is not None:
                del rows[b][hit:]
                cut = hit
        if gates is not None:
            gate_rows[b].append(gates[: len(rows[b]) - start])
        if cut is not None or len(rows[b]) >= max_new_tokens:
            done[b] = True

    # Prefill: the fused model and the drafter read the prompt once; the fused model's first token needs no draft.
    out = model(input_ids, attention_mask, use_cache=True, last_only=True)
    fstate, fmask = out.state, attention_mask
    scores = out.logprobs[:, -1]
    first = _sample(_warp(d, scores), d) if d.sample else scores.argmax(-1)
    for b, t in enumerate(first.tolist()):
        emit(b, [t], None if out.gates is None else out.gates[b, -1:])
    lookup = getattr(drafter, "propose", None) is not None  # a LookupDrafter: no model, no cache to roll back
    dmask, dcache = attention_mask, None
    if lookup:
        # each row's own text (real prompt tokens, then what it emitted), indexed for prompt lookup
        index = [drafter.index(input_ids[b][attention_mask[b].bool()].tolist() + rows[b]) for b in range(B)]
    else:
        _, dcache = drafter.step(input_ids, dmask, None, bool(dmask.all()))
    last = first  # (B,) the newest token neither model has read
    pending = torch.zeros_like(first)  # (B,) d_k of rows that accepted every draft: the drafter has not read it
    has_pending = torch.zeros(B, dtype=torch.bool, device=dev)
    any_pending = False
    k_sched = drafter.num_draft_tokens

    while not all(done):
        active = [b for b in range(B) if not done[b]]
        room = max(max_new_tokens - len(rows[b]) for b in active)  # tokens the longest-lived row may still take
        k = min(k_sched, room - 1)  # a row emits at most n + 1 tokens: more drafts than room - 1 are wasted
        # --- draft k tokens, one drafter forward each (the first also reads a pending d_k) ---
        drafts, qs, lengths = [], [], None
        if lookup and k > 0:
            props = [drafter.propose(index[b], k) if not done[b] else [] for b in range(B)]
            k = max(len(r) for r in props)  # 0 when no row found a match: a plain one-token fused step
            if k:
                lens = [len(r) for r in props]
                drafts_t = torch.tensor([r + [d.pad] * (k - len(r)) for r in props], dtype=torch.long, device=dev)
                if min(lens) < k:  # rows that drafted fewer: the filler columns are no drafts
                    lengths = torch.tensor(lens, device=dev)
                if d.sample:  # a point mass on each draft; 0 on the filler columns
                    q = torch.zeros(B, k, model.width, device=dev).scatter_(2, drafts_t[..., None], 1.0)
                    qs = [q if lengths is None else q * (torch.arange(k, device=dev) < lengths[:, None])[..., None]]
                drafts = list(drafts_t.unbind(1))
        elif k > 0:
            if any_pending:
                feed = torch.stack([pending, last], 1)
                block = torch.stack([has_pending, torch.ones_like(has_pending)], 1).to(dmask.dtype)
            else:
                feed, block = last[:, None], torch.ones(B, 1, dtype=dmask.dtype, device=dev)
            d_start = dmask.shape[1] + (1 if any_pending else 0)  # first column of this round's k-column block
            for i in range(k):
                dmask = torch.cat([dmask, block], 1)
                if i == 0:
                    plain = bool(dmask.all())  # no padding and no holes: the drafter needs no mask
                logits, dcache = drafter.step(feed, dmask, dcache, plain)
                if d.sample:
                    q = _warp(d, logits)
                    nxt = _sample(q, d)
                    qs.append(q)
                else:
                    nxt = logits.argmax(-1)
                drafts.append(nxt)
                feed, block = nxt[:, None], torch.ones(B, 1, dtype=dmask.dtype, device=dev)
                if drafter.confidence > 0 and i < k - 1:
                    # a draft the drafter itself doubts is likely rejected: verify what is there (HF's
                    # assistant_confidence_threshold); the draft probability of the sampled token, else the top one
                    conf = qs[-1].gather(1, nxt[:, None]) if d.sample else torch.softmax(logits, -1).amax(-1)
                    if bool((conf < drafter.confidence).all()):
                        break
            k = len(drafts)
        if not lookup or not drafts:
            drafts_t = torch.stack(drafts, 1) if drafts else last[:, None][:, :0]
        # --- verify: one forward of [last, d_1..d_k] per expert ---
        f_start = fmask.shape[1]
        fmask = torch.cat([fmask, torch.ones(B, k + 1, dtype=fmask.dtype, device=dev)], 1)
        out = model(torch.cat([last[:, None], drafts_t], 1), fmask, state=fstate, use_cache=True)
        if d.sample:
            p = _warp(d, out.logprobs)
            q = (qs[0] if lookup else torch.stack(qs, 1)) if qs else p[:, :0]
            n, tokens = verify_sampled(drafts_t, q, p, d, lengths)
        else:
            n, tokens = verify_greedy(drafts_t, out.logprobs, lengths)
        n_list, tok_list = n.tolist(), tokens.tolist()
        stats.rounds += 1
        for b in active:
            stats.drafted += k if lengths is None else lens[b]
            stats.accepted += n_list[b]
            stats.row_rounds += 1
            before = len(rows[b])
            emit(b, tok_list[b][: n_list[b] + 1], None if out.gates is None else out.gates[b, : n_list[b] + 1])
            stats.tokens += len(rows[b]) - before
            if lookup:
                index[b].extend(rows[b][before:])
        if all(done):
            break
        # --- roll back: the fused model keeps [last, d_1..d_n]; y = tokens[n] is the next `last` ---
        keep = n + 1
        kmax = int(keep.max())
        fstate = model.commit_state(out.state, keep, k + 1)
        fmask = fmask[:, : f_start + kmax].clone()
        fmask[:, f_start:] = (torch.arange(kmax, device=dev) < keep[:, None]).to(fmask.dtype)
        if k > 0 and not lookup:
            # The drafter read [pending?] + [last, d_1..d_{k-1}] (k columns); a row keeps min(n + 1, k) of those k.
            dkeep = keep.clamp(max=k)
            dmax = int(dkeep.max())
            crop_caches((dcache,), k - dmax)
            dmask = dmask[:, : d_start + dmax].clone()
            dmask[:, d_start:] = (torch.arange(dmax, device=dev) < dkeep[:, None]).to(dmask.dtype)
            has_pending = n == k  # every draft accepted: d_k is accepted but unread by the drafter
            pending = drafts_t[:, -1]
            any_pending = bool(has_pending.any())
        # (a model drafter has k = 0 only when every row has one token of room left: this round ended the decode
        # above; a lookup drafter also when no row found a match: that round was a plain one-token fused step)
        last = tokens.gather(1, n[:, None]).squeeze(1)
        if drafter.schedule == "heuristic" and k > 0 and not lookup:
            # Grow k while one more draft is worth its cost: the rows that accepted all k drafts (`full`) would each
            # gain about `alpha` tokens from a (k+1)-th, for one more drafter forward, against the round's `gain`
            # tokens for k drafter forwards plus the fused model's two. At batch 1 this is transformers' rule exactly
            # (k + 2 when every draft was accepted, else k - 1); in a batch it keeps the drafter from running long
            # for the few rows that copy well while the others reject early (every draft step costs the whole batch).
            full = sum(n_list[b] == k for b in active)
            alpha = sum(n_list[b] for b in active) / (k * len(active))
            gain = sum(n_list[b] + 1 for b in active)
            grow = full * alpha * (k + 2) > gain
            k_sched = min(k_sched + 2, MAX_DRAFT_TOKENS) if grow else max(1, k_sched - 1)

    n_max = max(len(r) for r in rows)
    sequences = torch.full((B, n_max), d.pad, dtype=torch.long, device=dev)
    for b, r in enumerate(rows):
        sequences[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    gates = None
    if any(gate_rows):
        ref = next(g for r in gate_rows for g in r)
        gates = torch.zeros((B, n_max, *ref.shape[1:]), dtype=ref.dtype, device=ref.device)
        for b, r in enumerate(gate_rows):
            if r:
                g = torch.cat(r, 0)
                gates[b, : g.shape[0]] = g
    texts = [cut_at_stop(t, d.stop) for t in model._decode(sequences, d.eos_ids, d.pad)]
    drafter.stats.add(stats)
    return GenerationResult(sequences, texts, gates, speculation=stats)
