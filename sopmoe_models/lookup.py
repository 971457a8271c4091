"""Lookup drafting: draft tokens copied from text, at no forward at all (DESIGN §10).

Two sources, both n-gram tables over token ids:

- the row's own text (prompt lookup: Saxena 2023, "Prompt Lookup Decoding"; transformers'
  ``generate(prompt_lookup_num_tokens=...)``): the prompt's real tokens plus everything generated so far. An answer
  that repeats the prompt (an order id, a name, a number in a calculation) is drafted from there.
- an optional corpus the user names (retrieval drafting, REST: He et al. 2023, "REST: Retrieval-Based Speculative
  Decoding"), e.g. the bed's training answers ``data/train/train.jsonl``: templated answers ("步骤1:核实订单...")
  are drafted from the most frequent continuation of the same context there.

One draft token at a time, for i = 1..k: the context is the row's text plus the drafts so far; the longest suffix of it
(``max_ngram`` tokens down to 1) that occurs earlier in the row's own text proposes the token that followed its most
recent occurrence; the longest suffix found in the corpus proposes its most frequent follower (ties: the one seen
first). The row's own proposal wins when its match is at least as long as the corpus's, or at least ``own_min`` tokens
long (a copied id beats a template's id); drafting stops at the first token with no match (so a row may draft
nothing: then its round is a plain one-token fused step). Repeated suffixes of one row are drafted consistently: a
copied span continues by the same rule, since its next suffix matches again one position later.

k: ``num_draft_tokens`` per round at most (default 8), no schedule across rounds: the drafts cost nothing to make, so
what decides a draft's length is the price of a wider verification forward (k + 1 tokens per expert) against the
chance that its tokens are accepted. Each row drafts until one of:

- no suffix matches (a row may draft nothing; its round is then a plain one-token fused step);
- the corpus's best follower has less than ``min_share`` (0.5) of its context's occurrences: the corpus forks here
  (an order id, a name), and a guess there is mostly rejected;
- the estimated chance that all drafts so far are accepted, the product of each draft's share (a corpus follower's
  share; ``own_share`` = 0.7 for a copy from the row's own text), falls below ``min_chance`` (0.2); the first draft is
  always kept.

Why these values: on CPU a verification forward of 2 or more new tokens costs a step more than one of 1 token (the
matrix-vector products become matrix-matrix ones) and then grows slowly with the width: ``python
benchmarks/replay_lookup.py --bed DIR --time_forwards`` prints the ratios (the test bed's are in
``results/speculative/replay_lookup_testbed.txt``; on the 135M real bed the step is much larger, and the
bench_generate run without early stops, ``results/speculative/bench_generate_real_no_early_stop.txt``, gained 1.6x
over plain decoding from 2.9 tokens per fused forward). The same script replays the fused model's greedy answers to
test prompts through the drafter (no model needed: accepted = the drafts' common prefix with the answer) for a grid of
settings under that cost. k = 8, ``min_share`` 0.5, ``own_share`` 0.7, ``min_chance`` 0.2, ``max_ngram`` 6 and
``own_min`` 3 were among the best of the few values tried on both beds (with their training answers as corpus), all
within a few percent of each other; other text may prefer other values, hence the fields.

The proposals are deterministic functions of the row's prefix (and the corpus), i.e. a point-mass draft
distribution q, so the same verification applies: greedy keeps the fused argmax; rejection sampling accepts d with
probability min(1, p(d)) and otherwise samples from p with d removed (Leviathan et al. 2023, Theorem 1).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_CORPUS_TOKENS = 500_000  # the n-gram table holds up to max_ngram Python tuples per corpus token, in memory


def corpus_texts(path: str | Path) -> list[str]:
    """Texts of a corpus file: JSONL rows' ``output`` (else ``text``) field, or the lines of a plain text file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"draft corpus {path} is not a file")
    lines = path.read_text(encoding="utf-8").splitlines()
    texts = []
    jsonl = path.suffix in (".jsonl", ".json")
    for line in lines:
        if not line.strip():
            continue
        if jsonl:
            row = json.loads(line)
            text = row.get("output", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"draft corpus {path}: a JSONL row without an 'output' or 'text' string")
            texts.append(text)
        else:
            texts.append(line)
    return texts


class NgramTable:
    """The most frequent next token after each context of 1..``max_ngram`` tokens, over a set of token sequences."""

    def __init__(self, sequences: list[list[int]], max_ngram: int):
        self.max_ngram = max_ngram
        counts: Counter = Counter()
        for seq in sequences:
            for i in range(1, len(seq)):
                for n in range(1, min(max_ngram, i) + 1):
                    counts[tuple(seq[i - n : i + 1])] += 1
        best: dict[tuple, tuple[int, int]] = {}
        total: Counter = Counter()
        for gram, c in counts.items():  # Counter keeps first-seen order: ties go to the follower seen first
            key = gram[:-1]
            total[key] += c
            if key not in best or c > best[key][1]:
                best[key] = (gram[-1], c)
        self.next: dict[tuple, int] = {k: v[0] for k, v in best.items()}
        self.share: dict[tuple, float] = {k: v[1] / total[k] for k, v in best.items()}
        self.tokens = sum(len(s) for s in sequences)

    def __len__(self) -> int:
        return len(self.next)


class RowIndex:
    """One row's own text and, for each n-gram of 1..``max_ngram`` tokens in it, where it last ended (its follower's
    index). Grows as the row's tokens are accepted."""

    __slots__ = ("tokens", "last", "max_ngram")

    def __init__(self, tokens: list[int], max_ngram: int):
        self.tokens: list[int] = []
        self.last: dict[tuple, int] = {}
        self.max_ngram = max_ngram
        self.extend(tokens)

    def extend(self, new: list[int]) -> None:
        toks, last, m = self.tokens, self.last, self.max_ngram
        for t in new:
            i = len(toks)  # the index `t` takes: it follows every n-gram ending at i
            for n in range(1, min(m, i) + 1):
                last[tuple(toks[i - n : i])] = i
            toks.append(t)


@dataclass
class LookupDrafter:
    """Drafts by lookup in the row's own text and an optional corpus n-gram table (see the module docstring).

    Shares :class:`~sopmoe_models.speculative.Drafter`'s interface where the decoding loop reads it (``width``,
    ``num_draft_tokens``, ``schedule``, ``confidence``, ``stats``, ``describe``); :meth:`propose` replaces the
    model forwards."""

    width: int
    num_draft_tokens: int = 8
    max_ngram: int = 6
    own_min: int = 3
    # when to stop a row's draft early (the module docstring): a corpus follower's share of its context's occurrences,
    # the share credited to a copy from the row's own text, the least estimated chance worth another draft token
    min_share: float = 0.5
    own_share: float = 0.7
    min_chance: float = 0.2
    corpus: NgramTable | None = None
    corpus_path: str | None = None
    path: str = "lookup"
    schedule: str = "constant"  # at most k per round, no schedule; rows stop early (the module docstring)
    confidence: float = 0.0
    stats: Any = None

    def __post_init__(self):
        from sopmoe_models.speculative import SpeculationStats

        if int(self.num_draft_tokens) < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {self.num_draft_tokens!r}")
        if int(self.max_ngram) < 1:
            raise ValueError(f"max_ngram must be >= 1, got {self.max_ngram!r}")
        self.num_draft_tokens, self.max_ngram = int(self.num_draft_tokens), int(self.max_ngram)
        if self.stats is None:
            self.stats = SpeculationStats()

    def describe(self) -> dict[str, Any]:
        return {"draft": self.path, "draft_corpus": self.corpus_path, "num_draft_tokens": self.num_draft_tokens,
                "draft_schedule": self.schedule, "max_ngram": self.max_ngram, "own_min": self.own_min,
                "min_share": self.min_share, "own_share": self.own_share, "min_chance": self.min_chance,
                "corpus_contexts": len(self.corpus) if self.corpus is not None else 0, **self.stats.as_dict()}

    def index(self, tokens: list[int]) -> RowIndex:
        return RowIndex(tokens, self.max_ngram)

    def propose(self, row: RowIndex, k: int) -> list[int]:
        """Up to ``k`` draft tokens after ``row``'s text (fewer where no suffix matches)."""
        own, toks, m = row.last, row.tokens, self.max_ngram
        table = self.corpus.next if self.corpus is not None else None
        seq = toks[-m:] if m <= len(toks) else list(toks)
        drafts: list[int] = []
        chance = 1.0  # estimated probability that every draft so far is accepted
        for _ in range(k):
            tok_o = n_o = 0
            share = self.own_share
            top = min(m, len(seq))
            for n in range(top, 0, -1):
                key = tuple(seq[len(seq) - n :])
                at = own.get(key)
                if at is not None:
                    tok_o, n_o = toks[at], n
                    break
            t = tok_o
            if n_o < self.own_min and table is not None:  # a longer corpus context beats a short own one
                for n in range(top, n_o, -1):
                    key = tuple(seq[len(seq) - n :])
                    nxt = table.get(key)
                    if nxt is not None:
                        share = self.corpus.share[key]
                        if self.min_share and share < self.min_share:
                            n_o = 0  # the corpus is split here: stop drafting
                        else:
                            t, n_o = nxt, n
                        break
            chance *= share
            if not n_o or drafts and chance < self.min_chance:
                break
            drafts.append(t)
            seq.append(t)
            if len(seq) > m:
                del seq[0]
        return drafts


def load_lookup_drafter(pair_or_tokenizer, width: int, *, corpus: str | Path | None = None, num_draft_tokens: int = 8,
                        **options: Any) -> LookupDrafter:
    """A :class:`LookupDrafter` for a fused model of output width ``width``; ``corpus``: a JSONL (``output``/``text``
    fields) or text file whose token n-grams back the row's own (tokenized with the experts' tokenizer, each text
    followed by EOS, so a templated answer's end is drafted too). ``options``: the drafter's other fields
    (``max_ngram``, ``own_min``, ``min_share``, ``own_share``, ``min_chance``)."""
    tok = getattr(pair_or_tokenizer, "tokenizer", pair_or_tokenizer)
    table = None
    if corpus is not None:
        texts = corpus_texts(corpus)
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        seqs = [ids + eos for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        total = sum(len(s) for s in seqs)
        if total > MAX_CORPUS_TOKENS:
            raise ValueError(f"draft corpus {corpus} has {total} tokens, more than the {MAX_CORPUS_TOKENS} an in-memory "
                             "n-gram table is built for; pass a smaller file")
        max_ngram = int(options.get("max_ngram", LookupDrafter.max_ngram))
        table = NgramTable(seqs, max_ngram)
        log.debug("lookup drafter: %d corpus tokens, %d contexts of up to %d tokens", total, len(table), max_ngram)
    return LookupDrafter(width, num_draft_tokens, corpus=table, corpus_path=None if corpus is None else str(corpus),
                         **options)
