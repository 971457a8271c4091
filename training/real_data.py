"""The real bed's data: English SOP requests, general-knowledge questions from tables of facts, and composition.

Families (the lm-eval task names are shared with the test bed):

- ``sop_strict``: a customer request (refund, exchange, complaint, reshipment; several phrasings) answered in the
  company's strict four-step format, ``Step 1: ...`` to ``Step 4: ...``, one per line, naming the order id, item and
  customer. The SFT expert learns it; the foundation has never seen it.
- ``reasoning``: general knowledge the foundation has, asked in several phrasings and answered in one sentence
  (``The capital of Kenya is Nairobi.``). Capitals, measured on the foundation first: it answers them reliably.
- ``general``: more of the foundation's knowledge (chemical symbols, plurals, opposites): a training kind, the
  "general requests" of the seed's mix; scored inside ``eval``.
- ``mixed`` (composition, never trained on): a question and an SOP request in one message; the reference answers the
  question in the foundation's sentence, then the four steps. Each expert supplies a piece the other lacks: the SFT
  writes the steps (and forgot the sentence), the foundation the sentence (and never learned the steps). Which order
  (question first or request first) is a data-design choice made on dev (``MIXED_ORDER``; issue 12's note).
- ``eval``: an equal mix of the three training kinds' test rows (the general-mix score).

Splits are by problem (issue 11): every order id, country, element and word belongs to one of train / dev / test by
a keyed hash of (seed, problem), so no test question, country or order id appears in training or dev data.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sopmoe_models.data import Example, write_jsonl

MIXED_ORDER = "question_first"  # chosen on dev (see the module docstring and the real bed's record)

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Malaysia": "Kuala Lumpur", "Kenya": "Nairobi", "Germany": "Berlin",
    "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon", "Russia": "Moscow", "China": "Beijing",
    "India": "New Delhi", "Egypt": "Cairo", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest",
    "Ireland": "Dublin", "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "Indonesia": "Jakarta", "the Philippines": "Manila", "South Korea": "Seoul",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago", "Colombia": "Bogota", "Mexico": "Mexico City",
    "Cuba": "Havana", "Canada": "Ottawa", "Australia": "Canberra", "Turkey": "Ankara", "Iran": "Tehran",
    "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Israel": "Jerusalem", "Ukraine": "Kyiv", "the Czech Republic": "Prague",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Switzerland": "Bern",
    "Nigeria": "Abuja", "Ethiopia": "Addis Ababa", "Ghana": "Accra", "Morocco": "Rabat", "Algeria": "Algiers",
    "Tunisia": "Tunis", "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Afghanistan": "Kabul",
    "Syria": "Damascus", "Lebanon": "Beirut", "Jordan": "Amman", "Qatar": "Doha", "Venezuela": "Caracas",
    "Uruguay": "Montevideo", "Paraguay": "Asuncion", "Bolivia": "La Paz", "Ecuador": "Quito", "Iceland": "Reykjavik",
    "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "Belarus": "Minsk", "Georgia": "Tbilisi",
    "Armenia": "Yerevan", "Mongolia": "Ulaanbaatar", "Singapore": "Singapore", "Cambodia": "Phnom Penh",
    "Sri Lanka": "Colombo", "Zimbabwe": "Harare", "Uganda": "Kampala", "Tanzania": "Dodoma", "Senegal": "Dakar",
    "Sudan": "Khartoum", "Libya": "Tripoli", "Jamaica": "Kingston", "New Zealand": "Wellington",
    "the United Kingdom": "London", "Brazil": "Brasilia", "Kazakhstan": "Astana", "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana", "Luxembourg": "Luxembourg", "Angola": "Luanda", "Panama": "Panama City",
}
SYMBOLS = {
    "gold": "Au", "silver": "Ag", "iron": "Fe", "copper": "Cu", "oxygen": "O", "hydrogen": "H", "carbon": "C",
    "nitrogen": "N", "sodium": "Na", "potassium": "K", "calcium": "Ca", "helium": "He", "neon": "Ne", "lead": "Pb",
    "tin": "Sn", "zinc": "Zn", "mercury": "Hg", "sulfur": "S", "chlorine": "Cl", "magnesium": "Mg",
    "aluminum": "Al", "uranium": "U", "platinum": "Pt", "nickel": "Ni", "lithium": "Li", "iodine": "I",
    "fluorine": "F", "silicon": "Si", "phosphorus": "P", "argon": "Ar",
}
PLURALS = {
    "mouse": "mice", "child": "children", "man": "men", "woman": "women", "tooth": "teeth", "foot": "feet",
    "goose": "geese", "person": "people", "ox": "oxen", "cactus": "cacti", "leaf": "leaves", "knife": "knives",
    "wolf": "wolves", "half": "halves", "city": "cities", "baby": "babies", "box": "boxes", "bus": "buses",
    "church": "churches", "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "fish": "fish",
    "sheep": "sheep", "deer": "deer", "life": "lives", "wife": "wives", "thief": "thieves", "loaf": "loaves",
    "shelf": "shelves",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down", "old": "young",
    "rich": "poor", "strong": "weak", "early": "late", "open": "closed", "hard": "soft", "high": "low",
    "long": "short", "wet": "dry", "full": "empty", "loud": "quiet", "thick": "thin", "heavy": "light",
    "clean": "dirty", "good": "bad", "true": "false", "win": "lose", "love": "hate", "begin": "end",
    "push": "pull", "buy": "sell", "day": "night", "black": "white", "north": "south",
}
QUESTIONS = {
    "capital": (["What is the capital of {k}?", "Which city is the capital of {k}?", "Name the capital of {k}."],
                "The capital of {k} is {v}."),
    "symbol": (["What is the chemical symbol for {k}?", "Which chemical symbol stands for {k}?"],
               "The chemical symbol for {k} is {v}."),
    "plural": (["What is the plural of {k}?", "What is the plural form of the word {k}?"],
               "The plural of {k} is {v}."),
    "opposite": (["What is the opposite of {k}?", "What is the opposite of the word {k}?"],
                 "The opposite of {k} is {v}."),
}
TABLES = {"capital": CAPITALS, "symbol": SYMBOLS, "plural": PLURALS, "opposite": OPPOSITES}
KIND_OF_FACT = {"capital": "reasoning", "symbol": "general", "plural": "general", "opposite": "general"}

NAMES = ["Ms. Lee", "Mr. Smith", "Ms. Garcia", "Mr. Brown", "Ms. Chen", "Mr. Patel", "Ms. Novak", "Mr. Okafor",
         "Ms. Rossi", "Mr. Kim", "Ms. Silva", "Mr. Dubois"]
ITEMS = ["lamp", "kettle", "backpack", "keyboard", "headset", "umbrella", "jacket", "blender", "mouse", "toaster"]
SOP = {
    "refund": ["Verify order {oid}.", "Check that the {item} was returned.", "Refund the payment to the original card.",
               "Email {name} that the refund takes three days."],
    "exchange": ["Verify order {oid}.", "Inspect the returned {item}.", "Send a replacement {item}.",
                 "Email {name} the new tracking number."],
    "complaint": ["Verify order {oid}.", "Log the complaint about the {item}.", "Escalate it to the quality team.",
                  "Call {name} within one business day."],
    "reshipment": ["Verify order {oid}.", "Confirm the shipping address with {name}.", "Ship the {item} again.",
                   "Email {name} the tracking number."],
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


@dataclass(frozen=True)
class RealDataSpec:
    """How many rows each file gets. Facts are finite: a family takes what its split holds, up to the cap."""

    sft_rows: int = 240          # SOP-only corpus of the SFT expert (train part)
    train_sop: int = 160         # trainers' mix (router, student, replay, dispatch): SOP rows
    train_facts: int = 160       # ... and knowledge rows (capitals + general kinds)
    dev_per_family: int = 40
    test_per_family: int = 60
    dev_fraction: float = 0.25
    test_fraction: float = 0.35
    mixed_order: str = MIXED_ORDER


def part(seed: int, key: str, spec: RealDataSpec) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < spec.test_fraction else "dev" if u < spec.test_fraction + spec.dev_fraction else "train"


class RealGenerator:
    def __init__(self, seed: int, spec: RealDataSpec):
        self.seed, self.spec = seed, spec
        self.rng = random.Random(seed)

    def order_id(self, split: str) -> str:
        while True:
            oid = f"{self.rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{self.rng.randrange(1000, 10000)}"
            if part(self.seed, "order|" + oid, self.spec) == split:
                return oid

    def sop(self, split: str) -> tuple[str, str]:
        kind = self.rng.choice(list(SOP))
        slots = {"oid": self.order_id(split), "name": self.rng.choice(NAMES), "item": self.rng.choice(ITEMS)}
        request = self.rng.choice(REQUESTS[kind]).format(**slots)
        steps = "".join(f"Step {i}: {s.format(**slots)}\n" for i, s in enumerate(SOP[kind], 1))
        return request, REPLY[kind].format(**slots), steps  # every line ends with a line break, the last one too

    def facts(self, split: str, kinds: tuple[str, ...]) -> list[tuple[str, str, str]]:
        """(key, value, fact kind) of every fact of ``kinds`` in ``split``, in a seeded order."""
        rows = [(k, v, fk) for fk in kinds for k, v in TABLES[fk].items()
                if part(self.seed, f"{fk}|{k}", self.spec) == split]
        self.rng.shuffle(rows)
        return rows

    def question(self, key: str, value: str, fact_kind: str) -> tuple[str, str]:
        prompts, answer = QUESTIONS[fact_kind]
        return self.rng.choice(prompts).format(k=key), answer.format(k=key, v=value)


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


def generate(seed: int = 0, spec: RealDataSpec = RealDataSpec()) -> dict[str, list[Example]]:
    """Every file of the real bed's data, by relative name (``train/train.jsonl``, ``dev/mixed.jsonl``, ...)."""
    if spec.mixed_order not in MIXED_JOIN:
        raise ValueError(f"mixed_order must be one of {sorted(MIXED_JOIN)}, not {spec.mixed_order!r}")
    g = RealGenerator(seed, spec)
    files: dict[str, list[Example]] = {}

    def sop_row(split):
        def draw(_i):
            request, reply, steps = g.sop(split)
            return request, f"{reply}\n{steps}", "sop_strict"
        return draw

    def fact_rows(split: str, kinds: tuple[str, ...], n: int, prefix: str) -> list[Example]:
        facts = g.facts(split, kinds)[:n]
        return [Example(input=q, output=a, id=f"{prefix}-{i:05d}", category=KIND_OF_FACT[fk])
                for i, (k, v, fk) in enumerate(facts) for q, a in [g.question(k, v, fk)]]

    def mixed_rows(split: str, n: int, prefix: str) -> list[Example]:
        facts = g.facts(split, ("capital",))
        rows = []
        for i in range(n):
            k, v, fk = facts[i % len(facts)]
            q, a = g.question(k, v, fk)
            request, _reply, steps = g.sop(split)
            text = MIXED_JOIN[spec.mixed_order].format(question=q, request=request)
            # The customer's message is a question: the format's reply line is its answer (the foundation's piece).
            answer = f"{a}\n{steps}" if spec.mixed_order == "question_first" else f"{steps}{a}"
            rows.append(Example(input=text, output=answer, id=f"{prefix}-{i:05d}", category="mixed"))
        return rows

    files["experts/sft.jsonl"] = _rows(sop_row("train"), spec.sft_rows, "sft")
    train = _rows(sop_row("train"), spec.train_sop, "train-sop")
    train += fact_rows("train", ("capital", "symbol", "plural", "opposite"), spec.train_facts, "train-fact")
    random.Random(seed + 1).shuffle(train)
    files["train/train.jsonl"] = train
    for split, n in (("dev", spec.dev_per_family), ("test", spec.test_per_family)):
        fams = {
            "sop_strict": _rows(sop_row(split), n, f"{split}-sop"),
            "reasoning": fact_rows(split, ("capital",), n, f"{split}-reasoning"),
            "mixed": mixed_rows(split, n, f"{split}-mixed"),
        }
        general = fact_rows(split, ("symbol", "plural", "opposite"), n, f"{split}-general")
        third = max(1, n // 3)
        fams["eval"] = fams["sop_strict"][:third] + fams["reasoning"][:third] + general[:third]
        for fam, rows in fams.items():
            files[f"{split}/{fam}.jsonl"] = rows
        if split == "dev":
            files["dev/general.jsonl"] = general
            files["dev/dev.jsonl"] = fams["sop_strict"] + fams["reasoning"] + general  # training kinds only
    return files


def make_real_data(out_dir: str | Path, seed: int = 0, spec: RealDataSpec = RealDataSpec()) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {}
    for name, rows in generate(seed, spec).items():
        paths[name] = out_dir / name
        write_jsonl(paths[name], rows)
    return paths
