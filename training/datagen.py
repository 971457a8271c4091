"""Seeded generator of the test bed's data: Chinese customer-service SOPs, arithmetic, and general replies.

Writes, under ``out_dir`` (issue 11: train / dev / test with disjoint problems; composition is zero-shot):

- ``train/train.jsonl``: what a company has for the router, the student and the replay baseline: strict SOP
  requests, reasoning, and general requests (polite replies, loosely phrased SOP questions). Each row's ``category``
  is its *kind* (``sop_strict``, ``reasoning``, ``general``); there is **no** ``mixed`` (composition) row;
- ``dev/{sop_strict,reasoning,mixed,eval}.jsonl`` and ``dev/dev.jsonl`` (the training kinds' dev split): every
  choice is made here (best epoch, merge parameters, the ensemble's weight, the test bed's sweep and properties);
- ``test/{sop_strict,reasoning,mixed,eval}.jsonl``: scored once per model (the lm-eval tasks; ``tasks/data`` ships
  seed 0's copy);
- ``experts/foundation.jsonl``: the foundation's pretraining corpus — reasoning, *loosely* formatted SOP answers that
  show their work, general replies and (``partial`` design) the strict format of the four non-money SOP kinds;
- ``experts/sft.jsonl``: the SFT corpus — strict SOP only, and its money steps carry a trivial formula
  (quantity 1, no discount or fee), so the SFT model never practises real arithmetic.

Why this design (issues 3, 11): answers *show their work* ("退款金额43*3-2=129-2=127元"). The foundation learns the
expression inside loose answers; the strict refund/invoice SOP carries the same expression in its step 2; ``mixed`` asks
for the strict SOP on a request whose amount must be computed. So ``sop_strict`` needs the SFT expert, ``reasoning``
needs the foundation, and ``mixed`` needs both (the format from one, the amount from the other). Two designs:

- ``partial`` (the default, the scenario's shape): the foundation has seen the strict format for the four kinds that
  carry no amount (so it follows the SOP on part of ``sop_strict``, never on a money kind), requests come in several
  phrasings, and reasoning requests may use SOP words;
- ``extreme`` (the earlier bed, kept as a preset): one opener per family, no strict format in the foundation's corpus.

Splits are by *problem*, not by string: a problem is an order id (an SOP case or a general reply) or an arithmetic
tuple (op, price, quantity, extra). A keyed hash of the seed and the problem puts each one in train, dev or test;
each file draws only from its own part. ``tests/test_datagen.py`` re-parses the files and checks it.

Everything is a pure function of the seed: ``random.Random(f"{seed}:{stream}")`` per stream, sorted iteration,
``json.dumps(..., ensure_ascii=False)`` with a fixed key order, so the same seed gives byte-identical files.
Outputs are single-line. To change the data, edit the templates or :class:`DataSpec`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sopmoe_models.data import FAMILIES, Example, write_jsonl

TRAIN_KINDS = ("sop_strict", "reasoning", "general")  # what trainers see by default: no composition (`mixed`)
COMPOSITION_KINDS = ("mixed",)
SPLITS = ("train", "dev", "test")
Design = Literal["partial", "extreme"]


@dataclass(frozen=True)
class DataSpec:
    """How much of everything to generate (examples per file) and which design."""

    design: Design = "partial"
    test_per_family: int = 200
    dev_per_family: int = 100
    train_per_kind: int = 400
    foundation_corpus: int = 24000
    sft_corpus: int = 3000
    dev_fraction: float = 0.10  # of all problems (order ids, arithmetic tuples)
    test_fraction: float = 0.15
    foundation_strict_share: float = 0.10  # partial design: strict non-money SOP in the foundation's corpus


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary of the domain (small on purpose: the test bed's tokenizer is character level).
NAMES = [s + t for s in "王李张刘陈杨赵黄周吴" for t in ("先生", "女士")]
PRODUCTS = ["耳机", "台灯", "水杯", "背包", "键盘", "鼠标", "雨伞", "衬衫", "茶叶", "毛巾"]
REASONS = ["尺码不合适", "颜色不喜欢", "外壳有划痕", "无法开机", "少发配件"]
ISSUES = ["发货太慢", "客服态度差", "包装破损", "商品与描述不符", "快递员未送上门"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "南京"]
ORDER_LETTERS = "ABCDEFGH"

PRICES = range(10, 100)
QTYS = range(1, 10)
EXTRAS = range(0, 10)


@dataclass(frozen=True)
class Calc:
    """An arithmetic problem: ``price*qty - extra`` (refund after a discount) or ``price*qty + extra`` (plus a fee)."""

    op: str  # "-" or "+"
    price: int
    qty: int
    extra: int

    @property
    def value(self) -> int:
        base = self.price * self.qty
        return base - self.extra if self.op == "-" else base + self.extra

    @property
    def work(self) -> str:
        """The shown work, e.g. ``43*3-2=129-2=127``."""
        return f"{self.price}*{self.qty}{self.op}{self.extra}={self.price * self.qty}{self.op}{self.extra}={self.value}"

    @property
    def key(self) -> str:
        return f"calc:{self.op}{self.price}*{self.qty}:{self.extra}"


@dataclass(frozen=True)
class Case:
    """One customer case: the slots every template draws from."""

    oid: str
    name: str
    product: str
    reason: str
    issue: str
    city: str
    calc: Calc


# ----------------------------------------------------------------------------------------------------------------
# Templates. ``{w}`` is the calculation's work. The request layout ("订单…，商品每件…元，数量…件，优惠…元") is shared by
# strict and loose prompts, so the foundation can read a strict request it has never seen. "单" appears only in "订单"
# (not "单价"), so copying the order id after "订单" is unambiguous for a 2-layer model.
#
# What the two experts share and what only one knows (the design that makes fusion matter, issue 3):
# - both know the words of every SOP step: the strict steps are the same clauses the loose answers use, and the
#   clauses of one kind start with different characters, so the foundation is unsure which comes next;
# - only the SFT corpus has the strict format, "步骤1:…;步骤2:…;步骤3:…;步骤4:…" (the four steps in this order) for a
#   "请按照SOP流程处理…" request. The foundation answers requests in prose: 2–4 clauses in random order after a random
#   opener, and half of its answers carry random decorations between clauses (1–3 marks drawn from ``DECORATIONS``,
#   which holds the strict format's marks among others), as scraped web text does;
# - only the foundation does arithmetic: the strict money steps in the SFT corpus carry a trivial formula.
# Why decorations: the mixture must take the format from the SFT expert and the digits from the foundation, so the
# foundation must be unsure about format tokens but sure about content after them. Without decorations it was
# confidently wrong on format tokens wherever it had any prior (it read "步骤1" as the start of a number, p≈0.99 for
# "*"; it continued numbered lists its own way), and a weight that trusts it for the digits (≥ 0.6) then took its
# format too: ``mixed`` scored 0 at every weight. Marks it had never seen derailed its arithmetic instead. Random
# decorations teach exactly what is needed: a mark can be anything, and the content goes on after it.
STEP_MARK = "步骤{n}:"
DECORATIONS = ["步骤1:", "步骤2:", "步骤3:", "步骤4:", ";", ":", "*", "#", "·", "【", "】", "→", "★", "√", "-", "1", "2",
               "3", "4", "SOP"]
MONEY_KINDS = {"refund": "-", "invoice": "+"}
REQUEST = {
    "refund": ("退款申请", "{name}，订单{oid}，{product}每件{p}元，数量{q}件，优惠{x}元"),
    "invoice": ("开票申请", "{name}，订单{oid}，{product}每件{p}元，数量{q}件，运费{x}元"),
    "exchange": ("换货申请", "{name}，订单{oid}，{product}{reason}"),
    "complaint": ("投诉", "{name}，订单{oid}，{issue}"),
    "address": ("修改地址申请", "{name}，订单{oid}，新地址{city}"),
    "logistics": ("物流查询", "{name}，订单{oid}"),
}
SOP_STEPS = {
    "refund": ["核实订单{oid}", "退款金额{w}元", "原路退回", "告知{name}三个工作日到账"],
    "invoice": ["核实订单{oid}", "开票金额{w}元", "生成电子发票", "发送至{name}邮箱"],
    "exchange": ["核实订单{oid}", "登记换货原因{reason}", "安排上门取件", "通知{name}新{product}已发出"],
    "complaint": ["记录投诉{issue}", "向{name}致歉", "转交主管处理订单{oid}", "二十四小时内回访"],
    "address": ["核实订单{oid}", "确认尚未发货", "地址改为{city}", "短信通知{name}"],
    "logistics": ["核实订单{oid}", "查询物流状态", "告知{name}预计送达时间", "记录本次查询"],
}
STRICT = {
    kind: (f"请按照SOP流程处理客户{title}：{slots}", ";".join(STEP_MARK.format(n=i + 1) + c for i, c in enumerate(SOP_STEPS[kind])))
    for kind, (title, slots) in REQUEST.items()
}
# The partial design asks for the strict format in several phrasings (issue 11: a per-request classifier must have
# real work to do, so no single opener marks a family); the extreme design uses the first only.
STRICT_OPENERS = ["请按照SOP流程处理客户{title}：", "按SOP处理这个{title}：", "{title}，走标准流程：", "客户{title}（按规范办）："]

LOOSE_PROMPTS = {
    "refund": [
        "客户退款：" + REQUEST["refund"][1],
        "{name}想退订单{oid}的{product}，每件{p}元，数量{q}件，优惠{x}元，怎么处理？",
        "订单{oid}的{product}每件{p}元，买了{q}件，用了{x}元优惠，{name}申请退款",
    ],
    "invoice": ["客户开票：" + REQUEST["invoice"][1], "{name}要给订单{oid}开发票，{product}每件{p}元，数量{q}件，运费{x}元"],
    "exchange": ["客户换货：" + REQUEST["exchange"][1], "{name}说订单{oid}的{product}{reason}，想换一个"],
    "complaint": ["客户投诉：" + REQUEST["complaint"][1], "{name}很不满意，订单{oid}{issue}"],
    "address": ["客户改地址：" + REQUEST["address"][1], "{name}想把订单{oid}的地址改到{city}"],
    "logistics": ["客户查物流：" + REQUEST["logistics"][1], "{name}问订单{oid}的快递到哪了"],
}
# Loose answers are prose: 2–4 clauses (the SOP steps plus a few extras) in random order, joined by a random
# separator or by "先…再…最后", after a random opener. The variety is the point: the foundation learns the content
# (ids, the shown work after "金额") under many orders, so a strict prefix does not derail it, and it stays unsure
# about the order and the format, which the SFT expert supplies in a mixture.
LOOSE_EXTRAS = {
    "refund": ["登记{product}的退款", "请耐心等待"],
    "invoice": ["登记{product}的发票", "请留意邮箱"],
    "exchange": ["请保留好包装"],
    "complaint": ["安抚{name}的情绪"],
    "address": ["请留意短信"],
    "logistics": ["请耐心等待"],
}
MUST_SAY = {"refund": "退款金额{w}元", "invoice": "开票金额{w}元"}
OPENERS = ["", "好的，", "{name}您好，", "收到，", "处理如下："]




def loose_answer(kind: str, rng: random.Random, decorate: bool = False, pool: list[str] = DECORATIONS) -> str:
    """A loosely formatted answer template for ``kind`` (slots still unfilled); ``decorate`` adds random marks from
    ``pool``. (Tried for the partial design: a pool without the step marks. Its foundation reasoned better, 0.95 vs
    0.70 on dev, but copied order ids worse inside the strict frame, and no mixture solved any ``mixed`` request.)"""
    clauses = SOP_STEPS[kind] + LOOSE_EXTRAS[kind]
    chosen = rng.sample(clauses, rng.randint(2, min(4, len(clauses))))
    if kind in MUST_SAY and MUST_SAY[kind] not in chosen:
        chosen[rng.randrange(len(chosen))] = MUST_SAY[kind]
    if decorate:
        chosen = [
            "".join(rng.choice(pool) for _ in range(rng.randint(1, 3))) + c if rng.random() < 0.6 else c
            for c in chosen
        ]
    if rng.random() < 0.7:
        body = rng.choice(["，", "；", "、", " "]).join(chosen) + rng.choice(["。", "", "！"])
    else:
        links = ["先", "再", "然后", "最后"][: len(chosen)]
        links[-1] = "最后"
        body = "，".join(a + c for a, c in zip(links, chosen)) + "。"
    return rng.choice(OPENERS) + body


REASONING = {
    "-": [
        ("{product}每件{p}元，买{q}件，优惠{x}元，一共付多少钱？", "{w}元"),
        ("买了{q}件{product}，每件{p}元，减去{x}元优惠，要付多少？", "{w}元"),
        ("计算：{p}*{q}-{x}", "{w}"),
    ],
    "+": [
        ("{product}每件{p}元，买{q}件，另付运费{x}元，总共多少钱？", "{w}元"),
        ("{q}件{product}每件{p}元，运费{x}元，合计多少？", "{w}元"),
        ("计算：{p}*{q}+{x}", "{w}"),
    ],
}
# Partial design only: reasoning requests that use SOP words and the strict request's layout, answered with the number
# alone (the foundation's skill), so the words "SOP"/"流程" do not decide which expert a request needs.
REASONING_SOP_WORDS = {
    "-": [("按SOP核算退款：{product}每件{p}元，数量{q}件，优惠{x}元，应退多少？", "{w}元"),
          ("流程里的计算题：{p}*{q}-{x}", "{w}")],
    "+": [("按SOP核算开票：{product}每件{p}元，数量{q}件，运费{x}元，开多少？", "{w}元"),
          ("流程里的计算题：{p}*{q}+{x}", "{w}")],
}
# General text: polite replies about an order (each keyed by its order id, so they split by problem too).
GENERAL = [
    ("客户{name}询问订单{oid}，请礼貌回复", "{name}您好，订单{oid}已收到，我们会尽快处理，感谢您的耐心。"),
    ("用一句话向{name}道别，订单{oid}", "感谢{name}的支持，订单{oid}如有问题请随时联系我们，祝您生活愉快。"),
    ("{name}夸奖了订单{oid}的{product}，请回复", "谢谢{name}的认可，很高兴{product}让您满意。"),
    ("{name}问订单{oid}多久能处理完", "一般二十四小时内处理完，主管确认状态后会短信告知{name}。"),
    ("{name}要求转人工，订单{oid}", "好的，正在转交人工客服，订单{oid}的信息已同步至主管。"),
    ("{name}对订单{oid}很生气，先安抚", "非常抱歉，我们向{name}致歉，本次问题会尽快回访。"),
    ("{name}问订单{oid}能不能修改", "订单{oid}尚未发货时可以修改，确认后通知您，小问题也可以找客服登记。"),
    ("{name}问订单{oid}的发票寄到哪里", "电子发票开具后发送至{name}的邮箱，纸质发票随货寄出。"),
    ("{name}问订单{oid}为什么还没发货", "很抱歉，原因是仓库排队，订单{oid}预计明天发出。"),
    ("{name}问什么是SOP流程，订单{oid}", "SOP流程就是按照规定的顺序处理问题，订单{oid}也会这样处理。"),
    ("{name}问订单{oid}的售后时间", "售后申请请在收货后七天内提交，具体以订单{oid}的页面为准。"),
]
# ----------------------------------------------------------------------------------------------------------------
class ProblemSplit:
    """Which part a problem belongs to: a keyed hash of (seed, problem), so the split is by problem, never by string."""

    def __init__(self, seed: int, dev_fraction: float, test_fraction: float):
        if dev_fraction <= 0 or test_fraction <= 0 or dev_fraction + test_fraction >= 1:
            raise ValueError(f"dev_fraction {dev_fraction} and test_fraction {test_fraction} must be > 0, sum < 1")
        self.seed, self.dev, self.test = seed, dev_fraction, test_fraction

    def part(self, key: str) -> str:
        h = hashlib.sha256(f"{self.seed}|{key}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        return "test" if u < self.test else "dev" if u < self.test + self.dev else "train"


def _fill(template: str, case: Case) -> str:
    c = case.calc
    return template.format(
        name=case.name, oid=case.oid, product=case.product, reason=case.reason, issue=case.issue, city=case.city,
        p=c.price, q=c.qty, x=c.extra, w=c.work,
    )


class Generator:
    """Draws cases from one part of the split (``train``, ``dev`` or ``test``) only."""

    def __init__(self, split: ProblemSplit, part: str, rng: random.Random, design: Design = "partial"):
        if part not in SPLITS:
            raise ValueError(f"unknown split part {part!r}; choose one of {SPLITS}")
        if design not in ("partial", "extreme"):
            raise ValueError(f"unknown data design {design!r}; choose partial or extreme")
        self.split, self.want, self.rng, self.design = split, part, rng, design

    def _ok(self, key: str) -> bool:
        return self.split.part(key) == self.want

    def calc(self, op: str, qtys: range | list[int], extras: range | list[int]) -> Calc:
        while True:
            c = Calc(op, self.rng.choice(PRICES), self.rng.choice(list(qtys)), self.rng.choice(list(extras)))
            if self._ok(c.key):
                return c

    def case(self, calc: Calc | None = None) -> Case:
        r = self.rng
        while True:
            oid = r.choice(ORDER_LETTERS) + f"{r.randrange(10000):04d}"
            if self._ok(f"order:{oid}"):
                break
        return Case(oid, r.choice(NAMES), r.choice(PRODUCTS), r.choice(REASONS), r.choice(ISSUES), r.choice(CITIES),
                    calc or Calc("-", 0, 0, 0))

    def opener(self, kind: str) -> str:
        title = REQUEST[kind][0]
        openers = STRICT_OPENERS if self.design == "partial" else STRICT_OPENERS[:1]
        return self.rng.choice(openers).format(title=title)

    # --- one example of each kind -------------------------------------------------------------------------------
    def strict(self, kind: str, hard: bool) -> Example:
        """Strict SOP; money kinds carry the trivial formula (qty 1, extra 0) unless ``hard`` (the mixed family)."""
        calc = None
        if kind in MONEY_KINDS:
            op = MONEY_KINDS[kind]
            calc = self.calc(op, range(2, 10), range(1, 10)) if hard else self.calc(op, [1], [0])
        case = self.case(calc)
        prompt = self.opener(kind) + REQUEST[kind][1]
        return Example(_fill(prompt, case), _fill(STRICT[kind][1], case))

    def loose(self, kind: str, decorate: bool = False) -> Example:
        calc = self.calc(MONEY_KINDS[kind], QTYS, EXTRAS) if kind in MONEY_KINDS else None
        case = self.case(calc)
        answer = loose_answer(kind, self.rng, decorate=decorate)
        return Example(_fill(self.rng.choice(LOOSE_PROMPTS[kind]), case), _fill(answer, case))

    def reasoning(self) -> Example:
        op = self.rng.choice("-+")
        case = self.case(self.calc(op, QTYS, EXTRAS))
        templates = REASONING[op] + (REASONING_SOP_WORDS[op] if self.design == "partial" else [])
        prompt, answer = self.rng.choice(templates)
        return Example(_fill(prompt, case), _fill(answer, case))

    def general(self) -> Example:
        prompt, answer = self.rng.choice(GENERAL)
        case = self.case()
        return Example(_fill(prompt, case), _fill(answer, case))

    # --- families and kinds ----------------------------------------------------------------------------------------
    def family(self, name: str) -> Example:
        """One example of a scored family (``FAMILIES``) or a training kind (``TRAIN_KINDS``)."""
        r = self.rng
        if name == "sop_strict":
            return self.strict(r.choice(sorted(STRICT)), hard=False)
        if name == "mixed":
            return self.strict(r.choice(sorted(MONEY_KINDS)), hard=True)
        if name == "reasoning":
            return self.reasoning()
        if name == "general":  # what a company's general data holds: polite replies and loosely phrased SOP questions
            return self.general() if r.random() < 0.5 else self.loose(r.choice(sorted(LOOSE_PROMPTS)))
        if name == "eval":  # a general mix of everything the two experts know, between them
            pick = r.randrange(5)
            if pick == 0:
                return self.general()
            if pick == 1:
                return self.loose(r.choice(sorted(LOOSE_PROMPTS)))
            return self.family(("sop_strict", "reasoning", "mixed")[pick - 2])
        raise ValueError(f"unknown family {name!r}; choose one of {FAMILIES + TRAIN_KINDS[2:]}")

    def foundation(self, strict_share: float = 0.0) -> Example:
        """Pretraining mix: reasoning 50%, loose SOP with money 30%, other loose SOP 10%, general 10%; with
        ``strict_share`` > 0 that share is the strict format of a non-money SOP kind instead."""
        if self.rng.random() < strict_share:
            return self.strict(self.rng.choice(sorted(set(STRICT) - set(MONEY_KINDS))), hard=False)
        u = self.rng.random()
        if u < 0.50:
            return self.reasoning()
        if u < 0.80:
            return self.loose(self.rng.choice(sorted(MONEY_KINDS)), decorate=self.rng.random() < 0.5)
        if u < 0.90:
            kind = self.rng.choice(["exchange", "complaint", "address", "logistics"])
            return self.loose(kind, decorate=self.rng.random() < 0.5)
        return self.general()

    def sft(self) -> Example:
        kinds = ["refund", "refund", "invoice", "invoice", "exchange", "complaint", "address", "logistics"]
        return self.strict(self.rng.choice(kinds), hard=False)


def _unique(draw: Callable[[], Example], n: int, prefix: str, category: str | None) -> Iterator[Example]:
    """``n`` distinct examples (by input) from ``draw``, with ids ``prefix-00000``; ``category`` None keeps the kind
    the draw gave (or the prefix's family)."""
    seen: set[str] = set()
    for _ in range(n * 50):
        ex = draw()
        if ex.input in seen:
            continue
        seen.add(ex.input)
        yield Example(ex.input, ex.output, id=f"{prefix}-{len(seen) - 1:05d}", category=category or ex.category)
        if len(seen) == n:
            return
    raise RuntimeError(f"could not draw {n} distinct {category or prefix} examples; enlarge the problem space")


def generate(seed: int = 0, spec: DataSpec = DataSpec()) -> dict[str, list[Example]]:
    """All files' examples, keyed by their path relative to the data folder."""
    split = ProblemSplit(seed, spec.dev_fraction, spec.test_fraction)

    def gen(stream: str, part: str) -> Generator:
        return Generator(split, part, random.Random(f"{seed}:{stream}"), spec.design)

    files: dict[str, list[Example]] = {}
    for part, n in (("dev", spec.dev_per_family), ("test", spec.test_per_family)):
        for fam in FAMILIES:
            g = gen(f"{part}:{fam}", part)
            files[f"{part}/{fam}.jsonl"] = list(_unique(lambda g=g, fam=fam: g.family(fam), n, f"{part}-{fam}", fam))
    # The training kinds, for the trainers (train) and their selection (dev): never a composition row.
    for part, n in (("train", spec.train_per_kind), ("dev", spec.dev_per_family)):
        rows: list[Example] = []
        for kind in TRAIN_KINDS:
            g = gen(f"{part}:kind:{kind}", part)
            rows += _unique(lambda g=g, kind=kind: g.family(kind), n, f"{part}-{kind}", kind)
        random.Random(f"{seed}:shuffle:{part}").shuffle(rows)
        files["train/train.jsonl" if part == "train" else "dev/dev.jsonl"] = rows
    share = spec.foundation_strict_share if spec.design == "partial" else 0.0
    g = gen("foundation", "train")
    files["experts/foundation.jsonl"] = list(_unique(lambda: g.foundation(share), spec.foundation_corpus,
                                                     "foundation", "foundation"))
    g = gen("sft", "train")
    files["experts/sft.jsonl"] = list(_unique(g.sft, spec.sft_corpus, "sft", "sft"))
    for name, examples in files.items():
        bad = [e.id for e in examples if "\n" in e.input or "\n" in e.output]
        if bad:
            raise AssertionError(f"{name}: multi-line examples {bad[:3]}")
    leaked = [e.id for e in files["train/train.jsonl"] + files["dev/dev.jsonl"] if e.category in COMPOSITION_KINDS]
    if leaked:
        raise AssertionError(f"composition rows in the training kinds: {leaked[:3]}")
    return files


def make_data(out_dir: str | Path, seed: int = 0, spec: DataSpec = DataSpec()) -> dict[str, Path]:
    """Generate and write every file under ``out_dir``; returns ``{relative name: path}``."""
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for name, examples in generate(seed, spec).items():
        path = out_dir / name
        write_jsonl(path, examples)
        paths[name] = path
    return paths
