"""The real bed's data: English SOP requests, general-knowledge questions from tables of facts, and composition.

Families (the lm-eval task names are shared with the test bed):

- ``sop_strict``: a customer request (refund, exchange, complaint, reshipment; three phrasings each) answered in the
  company's strict format: a one-sentence reply line, then ``Step 1: ...`` to ``Step 4: ...``, one per line, naming the
  order id, item and customer. The SFT expert learns it; the foundation has never seen it.
- ``reasoning``: general knowledge the foundation has (:mod:`training.real_facts`: capitals, chemical symbols,
  plurals, opposites), asked in several phrasings and answered in the table's one canonical sentence ("The capital of
  Kenya is Nairobi."). Only facts the foundation knows are used (``known``, measured by :mod:`training.realbed`).
- ``reasoning_mc``: the same test problems as 4-way multiple choice, the right value against 3 other values of the
  same table, format-free (``tasks/reasoning_mc.yaml``): with ``reasoning`` it tells lost facts from lost format.
- ``general`` (a training kind, scored inside ``eval``): the tables the foundation knows but phrases its own way
  (continents, currencies, languages, authors).
- ``mixed`` (composition, never trained on): a knowledge question and an SOP request in one message; the reference
  answers the question in the reply line, in the table's sentence, then the four steps: the foundation supplies the
  sentence, the SFT the steps.
- ``eval``: an equal mix of the ``sop_strict``, ``reasoning`` and ``general`` test rows (the general-mix score).

Splits are by problem (issue 11): every order id and every fact belongs to one of train / dev / test. Facts are
split per table in exact proportions by a keyed hash of (seed, table, key) (:func:`fact_split`), so each seed has
its own split and as many test problems as the known facts allow (issue 22: at least 100 per family at the full
size, checked by :func:`check_sizes`); order ids by a keyed hash too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sopmoe_models.data import Example, write_jsonl
from training.real_facts import TABLES

MIXED_ORDER = "question_first"  # the knowledge question first, then the request (issue 12's note: chosen on dev)
FAMILY_TABLES = {fam: tuple(t.name for t in TABLES.values() if t.family == fam) for fam in ("reasoning", "general")}

NAMES = ["Ms. Lee", "Mr. Smith", "Ms. Garcia", "Mr. Brown", "Ms. Chen", "Mr. Patel", "Ms. Novak", "Mr. Okafor",
         "Ms. Rossi", "Mr. Kim", "Ms. Silva", "Mr. Dubois"]
ITEMS = ["lamp", "kettle", "backpack", "keyboard", "headset", "umbrella", "jacket", "blender", "mouse", "toaster"]
# The steps of each kind. Step 1 names the kind (copied from the request): the SFT then writes the right steps whatever
# line precedes them, not only after its own reply line (issue 22's composition; seed 0 dev, before: the sft chose the
# wrong steps after a foreign first line in 34 of 57 mixed rows).
SOP = {
    "refund": ["Verify order {oid} for the refund.", "Check that the {item} was returned.",
               "Refund the payment to the original card.", "Email {name} that the refund takes three days."],
    "exchange": ["Verify order {oid} for the exchange.", "Inspect the returned {item}.", "Send a replacement {item}.",
                 "Email {name} the new tracking number."],
    "complaint": ["Verify order {oid} for the complaint.", "Log the complaint about the {item}.",
                  "Escalate it to the quality team.", "Call {name} within one business day."],
    "reshipment": ["Verify order {oid} for the reshipment.", "Confirm the shipping address with {name}.",
                   "Ship the {item} again.", "Email {name} the tracking number."],
}
# The strict format's first line answers the customer's message in one sentence; the four steps follow.
REPLY = {"refund": "Your refund for order {oid} is on its way, {name}.",
         "exchange": "Your exchange for order {oid} is approved, {name}.",
         "complaint": "We are sorry about the {item}, {name}.",
         "reshipment": "We will ship order {oid} again, {name}."}
REQUESTS = {
    "refund": ["Please process a refund for order {oid}: {name} returned the {item}.",
               "{name} wants a refund for the {item} in order {oid}. Handle it per the SOP.",
               "Refund request, order {oid} ({item}), customer {name}. Follow the standard procedure."],
    "exchange": ["Please process an exchange for order {oid}: {name} needs a new {item}.",
                 "{name} wants to exchange the {item} from order {oid}. Handle it per the SOP.",
                 "Exchange request, order {oid} ({item}), customer {name}. Follow the standard procedure."],
    "complaint": ["Please handle a complaint about order {oid}: {name} is unhappy with the {item}.",
                  "{name} filed a complaint about the {item} in order {oid}. Handle it per the SOP.",
                  "Complaint, order {oid} ({item}), customer {name}. Follow the standard procedure."],
    "reshipment": ["Please reship order {oid}: the {item} never reached {name}.",
                   "{name} never got the {item} from order {oid}. Reship it per the SOP.",
                   "Reshipment request, order {oid} ({item}), customer {name}. Follow the standard procedure."],
}
MIXED_JOIN = {"question_first": "{question} Also: {request}", "request_first": "{request} Also: {question}"}
MC_CHOICES = 4


@dataclass(frozen=True)
class RealDataSpec:
    """How many rows each file gets. Facts are finite: a knowledge family takes the split's facts, up to the cap."""

    sft_rows: int = 240          # SOP-only corpus of the SFT expert (train part)
    train_sop: int = 160         # trainers' mix (router, student, replay, dispatch): SOP rows
    train_facts: int = 160       # ... and knowledge rows (reasoning and general tables)
    dev_per_family: int = 60
    test_per_family: int = 120
    dev_fraction: float = 0.25   # of each table's (known) facts; order ids are split with the same fractions
    test_fraction: float = 0.5
    min_test: int = 0            # fewest test problems per family (check_sizes; 100 at the full size)
    mixed_order: str = MIXED_ORDER


def _unit(seed: int, key: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "big") / 2**64


def part(seed: int, key: str, spec: RealDataSpec) -> str:
    """The split of an order id: a keyed hash against the spec's fractions."""
    u = _unit(seed, key)
    return "test" if u < spec.test_fraction else "dev" if u < spec.test_fraction + spec.dev_fraction else "train"


def fact_split(seed: int, spec: RealDataSpec, known: set[tuple[str, str]] | None = None
               ) -> dict[str, dict[str, list[str]]]:
    """``{split: {table: [keys]}}``: each table's facts (the ``known`` ones, when given) ordered by a keyed hash of
    (seed, table, key) and cut in exact proportions, test first, then dev, the rest train."""
    out: dict[str, dict[str, list[str]]] = {s: {} for s in ("train", "dev", "test")}
    for name, table in TABLES.items():
        keys = [k for k in table.facts if known is None or (name, k) in known]
        keys.sort(key=lambda k: _unit(seed, f"fact|{name}|{k}"))
        n_test, n_dev = round(len(keys) * spec.test_fraction), round(len(keys) * spec.dev_fraction)
        out["test"][name], out["dev"][name] = keys[:n_test], keys[n_test:n_test + n_dev]
        out["train"][name] = keys[n_test + n_dev:]
    return out


class RealGenerator:
    def __init__(self, seed: int, spec: RealDataSpec, known: set[tuple[str, str]] | None = None):
        self.seed, self.spec = seed, spec
        self.rng = random.Random(seed)
        self.split = fact_split(seed, spec, known)

    def order_id(self, split: str) -> str:
        while True:
            oid = f"{self.rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{self.rng.randrange(1000, 10000)}"
            if part(self.seed, "order|" + oid, self.spec) == split:
                return oid

    def sop(self, split: str) -> tuple[str, str, str]:
        kind = self.rng.choice(list(SOP))
        slots = {"oid": self.order_id(split), "name": self.rng.choice(NAMES), "item": self.rng.choice(ITEMS)}
        request = self.rng.choice(REQUESTS[kind]).format(**slots)
        steps = "".join(f"Step {i}: {s.format(**slots)}\n" for i, s in enumerate(SOP[kind], 1))
        return request, REPLY[kind].format(**slots), steps  # every line ends with a line break, the last one too

    def facts(self, split: str, family: str) -> list[tuple[str, str]]:
        """(table, key) of every fact of ``family``'s tables in ``split``, in a seeded order."""
        rows = [(name, k) for name in FAMILY_TABLES[family] for k in self.split[split][name]]
        self.rng.shuffle(rows)
        return rows

    def question(self, table: str, key: str) -> tuple[str, str]:
        t = TABLES[table]
        return self.rng.choice(t.questions).format(k=key), t.sentence(key)

    def choices(self, table: str, key: str) -> tuple[str, ...]:
        """The right value and :data:`MC_CHOICES` - 1 other values of the same table, in a seeded order."""
        facts = TABLES[table].facts
        value = facts[key]
        others = sorted({v for v in facts.values() if v != value})
        picked = [value, *self.rng.sample(others, MC_CHOICES - 1)]
        self.rng.shuffle(picked)
        return tuple(picked)


def _rows(draw: Callable[[int], tuple[str, str, str]], n: int, prefix: str) -> list[Example]:
    out, seen, i = [], set(), 0
    while len(out) < n and i < n * 50:
        text, answer, kind = draw(i)
        i += 1
        if text in seen:
            continue
        seen.add(text)
        out.append(Example(input=text, output=answer, id=f"{prefix}-{len(out):05d}", category=kind))
    return out


def generate(seed: int = 0, spec: RealDataSpec = RealDataSpec(), known: set[tuple[str, str]] | None = None
             ) -> dict[str, list[Example]]:
    """Every file of the real bed's data, by relative name (``train/train.jsonl``, ``dev/mixed.jsonl``, ...), from
    the facts in ``known`` (every fact of the tables when None)."""
    if spec.mixed_order not in MIXED_JOIN:
        raise ValueError(f"mixed_order must be one of {sorted(MIXED_JOIN)}, not {spec.mixed_order!r}")
    g = RealGenerator(seed, spec, known)
    files: dict[str, list[Example]] = {}

    def sop_row(split):
        def draw(_i):
            request, reply, steps = g.sop(split)
            return request, f"{reply}\n{steps}", "sop_strict"
        return draw

    def fact_rows(split: str, family: str, n: int, prefix: str, phrasings: int = 1) -> list[Example]:
        """Up to ``n`` rows over the split's facts (each fact in up to ``phrasings`` distinct questions)."""
        rows, seen = [], set()
        for table, key in g.facts(split, family) * phrasings:
            q, a = g.question(table, key)
            if q not in seen and len(rows) < n:
                seen.add(q)
                rows.append(Example(input=q, output=a, id=f"{prefix}-{len(rows):05d}", category=family))
        return rows

    def mixed_rows(split: str, n: int, prefix: str) -> list[Example]:
        rows = []
        for i, (table, key) in enumerate(g.facts(split, "reasoning")[:n]):
            q, a = g.question(table, key)
            request, _reply, steps = g.sop(split)
            text = MIXED_JOIN[spec.mixed_order].format(question=q, request=request)
            # The customer's message opens with a question: the format's reply line is its answer (the foundation's
            # piece), the steps are the SFT's.
            answer = f"{a}\n{steps}" if spec.mixed_order == "question_first" else f"{steps}{a}"
            rows.append(Example(input=text, output=answer, id=f"{prefix}-{i:05d}", category="mixed"))
        return rows

    files["experts/sft.jsonl"] = _rows(sop_row("train"), spec.sft_rows, "sft")
    train = _rows(sop_row("train"), spec.train_sop, "train-sop")
    facts = fact_rows("train", "reasoning", spec.train_facts, "train-reasoning", phrasings=2)
    facts += fact_rows("train", "general", spec.train_facts, "train-general", phrasings=2)
    random.Random(seed + 2).shuffle(facts)
    train += facts[: spec.train_facts]
    random.Random(seed + 1).shuffle(train)
    files["train/train.jsonl"] = train
    for split, n in (("dev", spec.dev_per_family), ("test", spec.test_per_family)):
        reasoning = fact_rows(split, "reasoning", n, f"{split}-reasoning")
        fams = {"sop_strict": _rows(sop_row(split), n, f"{split}-sop"), "reasoning": reasoning,
                "mixed": mixed_rows(split, n, f"{split}-mixed")}
        general = fact_rows(split, "general", n, f"{split}-general")
        fams["reasoning_mc"] = [Example(input=r.input, output=TABLES[t].facts[k], id=f"{split}-mc-{i:05d}",
                                        category="reasoning", choices=g.choices(t, k))
                                for i, (r, (t, k)) in enumerate(zip(reasoning, _fact_keys(reasoning)))]
        third = max(1, n // 3)
        fams["eval"] = fams["sop_strict"][:third] + reasoning[:third] + general[:third]
        for fam, rows in fams.items():
            files[f"{split}/{fam}.jsonl"] = rows
        if split == "dev":
            files["dev/general.jsonl"] = general
            files["dev/dev.jsonl"] = fams["sop_strict"] + reasoning + general  # training kinds only
    check_sizes(files, spec)
    return files


def _fact_keys(rows: list[Example]) -> list[tuple[str, str]]:
    """(table, key) of knowledge rows, read back from their canonical answers."""
    by_sentence = {t.sentence(k): (name, k) for name, t in TABLES.items() for k in t.facts}
    return [by_sentence[r.output] for r in rows]


def check_sizes(files: dict[str, list[Example]], spec: RealDataSpec) -> None:
    """Every scored test family has at least ``spec.min_test`` rows (issue 22: 100 at the full size)."""
    short = {name: len(rows) for name, rows in files.items() if name.startswith("test/") and len(rows) < spec.min_test}
    if short:
        raise ValueError(f"the real bed's test split is too small: {short} (at least {spec.min_test} problems per "
                         "family); the foundation knows too few facts of the tables in training/real_facts.py")


def make_real_data(out_dir: str | Path, seed: int = 0, spec: RealDataSpec = RealDataSpec(),
                   known: set[tuple[str, str]] | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {}
    for name, rows in generate(seed, spec, known).items():
        paths[name] = out_dir / name
        write_jsonl(paths[name], rows)
    return paths
