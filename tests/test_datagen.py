"""The data generator: deterministic, split by problem into train / dev / test, composition never in a training
kind, several phrasings, valid, and the shipped task data is its seed-0 test split."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sopmoe_models.data import load_jsonl
from training.datagen import FAMILIES, STRICT_OPENERS, TRAIN_KINDS, DataSpec, make_data

REPO = Path(__file__).resolve().parents[1]
TRAINING_FILES = ("train/train.jsonl", "experts/foundation.jsonl", "experts/sft.jsonl")
DEV_FILES = tuple(f"dev/{fam}.jsonl" for fam in FAMILIES) + ("dev/dev.jsonl",)
TEST_FILES = tuple(f"test/{fam}.jsonl" for fam in FAMILIES)
ORDER_ID = re.compile(r"[A-H]\d{4}")
CALC = re.compile(r"(\d+)\*(\d+)([+-])(\d+)=")
PROMPT_CALC = re.compile(r"每件(\d+)元，数量(\d+)件，(优惠|运费)(\d+)元")


@pytest.fixture(scope="module")
def seed0(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data0")
    make_data(out, seed=0)
    return out


def _problems(path: Path) -> tuple[set[str], set[tuple]]:
    """Order ids and arithmetic tuples mentioned anywhere in a file (inputs and outputs)."""
    orders, calcs = set(), set()
    for ex in load_jsonl(path):
        for text in (ex.input, ex.output):
            orders.update(ORDER_ID.findall(text))
            calcs.update((op, int(p), int(q), int(x)) for p, q, op, x in CALC.findall(text))
        for p, q, kind, x in PROMPT_CALC.findall(ex.input):
            calcs.add(("-" if kind == "优惠" else "+", int(p), int(q), int(x)))
    return orders, calcs


def test_same_seed_gives_byte_identical_files(seed0, tmp_path):
    paths = make_data(tmp_path / "again", seed=0)
    assert sorted(paths) == sorted(str(p.relative_to(seed0)) for p in seed0.rglob("*.jsonl"))
    for name, path in paths.items():
        assert path.read_bytes() == (seed0 / name).read_bytes(), name
    other = make_data(tmp_path / "seed1", seed=1)
    assert other["test/mixed.jsonl"].read_bytes() != (seed0 / "test/mixed.jsonl").read_bytes()


def _union(root: Path, names) -> tuple[set, set, set]:
    orders, calcs, inputs = set(), set(), set()
    for name in names:
        o, c = _problems(root / name)
        orders |= o
        calcs |= c
        inputs |= {ex.input for ex in load_jsonl(root / name)}
    return orders, calcs, inputs


def test_train_dev_and_test_share_no_problem(seed0):
    parts = {"train": _union(seed0, TRAINING_FILES), "dev": _union(seed0, DEV_FILES), "test": _union(seed0, TEST_FILES)}
    for name in DEV_FILES + TEST_FILES:
        orders, calcs = _problems(seed0 / name)
        assert orders or calcs, f"{name}: no problem found (did the templates change?)"
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        (oa, ca, ia), (ob, cb, ib) = parts[a], parts[b]
        assert not oa & ob, f"{a} and {b} share order ids"
        assert not ca & cb, f"{a} and {b} share arithmetic problems"
        assert not ia & ib, f"{a} and {b} share inputs"


def test_training_kinds_hold_no_composition_row(seed0):
    """Composition is zero-shot (issue 11): no `mixed` row in what trainers see, and none of its problems either."""
    for name in ("train/train.jsonl", "dev/dev.jsonl"):
        rows = load_jsonl(seed0 / name)
        assert {ex.category for ex in rows} == set(TRAIN_KINDS), name
        assert not [ex.id for ex in rows if ex.category == "mixed"]
        # a composition row is a strict SOP whose money step has a real computation (quantity >= 2 or an extra)
        for ex in rows:
            if ex.output.startswith("步骤1:"):
                assert all(int(q) == 1 and int(x) == 0 for _, q, _, x in CALC.findall(ex.output)), ex.id


def test_default_training_config_excludes_composition(tmp_path):
    """The test bed's config names the kinds its trainers may see, and the loader enforces them."""
    from sopmoe_models.data import DataError, Example, load_training_examples, write_jsonl
    from training.testbed import TestbedSpec, write_config

    assert "mixed" not in TRAIN_KINDS
    cfg = write_config(tmp_path, TestbedSpec()).read_text(encoding="utf-8")
    assert "train_kinds:" in cfg and "- mixed" not in cfg.split("train_kinds:")[1].split("eval_file")[0]
    f = tmp_path / "t.jsonl"
    write_jsonl(f, [Example("a", "b", category="mixed"), Example("c", "d", category="reasoning")])
    assert [ex.input for ex in load_training_examples(f, list(TRAIN_KINDS))] == ["c"]
    assert len(load_training_examples(f, None)) == 2
    write_jsonl(f, [Example("a", "b", category="mixed")])
    with pytest.raises(DataError, match="no row of the kinds"):
        load_training_examples(f, list(TRAIN_KINDS))
    write_jsonl(f, [Example("a", "b")])
    with pytest.raises(DataError, match="no 'category'"):
        load_training_examples(f, list(TRAIN_KINDS))


def test_files_are_valid_and_labelled(seed0):
    for part, n in (("dev", 100), ("test", 200)):
        for fam in FAMILIES:
            examples = load_jsonl(seed0 / f"{part}/{fam}.jsonl")
            assert len(examples) == n
            assert {ex.category for ex in examples} == {fam}
            assert len({ex.id for ex in examples}) == len(examples)
    train = load_jsonl(seed0 / "train/train.jsonl")
    assert len(train) == 3 * 400 and len({ex.id for ex in train}) == len(train)
    for path in seed0.rglob("*.jsonl"):
        for ex in load_jsonl(path):
            assert ex.id and ex.category
            assert "\n" not in ex.input + ex.output, f"{path}: {ex.id} is multi-line"


def test_families_have_their_design(seed0, tmp_path):
    """Partial design: the foundation sees the strict format only for kinds without an amount; several phrasings;
    reasoning prompts may carry SOP words. Extreme design: no strict format in the foundation's corpus, one opener.
    Both: strict money SOPs only in the SFT corpus (trivial formulas); mixed needs maths."""
    foundation = load_jsonl(seed0 / "experts/foundation.jsonl")
    strict = [ex for ex in foundation if re.search("步骤1:[^;]*;步骤2:[^;]*;步骤3:[^;]*;步骤4:", ex.output)]
    assert 0.05 < len(strict) / len(foundation) < 0.15
    assert not [ex for ex in strict if "金额" in ex.output]  # never a money kind
    assert any("退款金额" in ex.output and CALC.search(ex.output) for ex in foundation)  # loose SOP shows its work
    sop_prompts = [ex.input for ex in load_jsonl(seed0 / "test/sop_strict.jsonl")]
    used = {o.split("{")[0][:3] for o in STRICT_OPENERS if any(p.startswith(o.split("{")[0][:3]) for p in sop_prompts)}
    assert len(used) >= 3, "several phrasings of the strict request"
    assert any("SOP" in ex.input for ex in load_jsonl(seed0 / "test/reasoning.jsonl"))
    extreme = tmp_path / "extreme"
    make_data(extreme, seed=0, spec=DataSpec(design="extreme", foundation_corpus=2000, sft_corpus=100))
    foundation_x = load_jsonl(extreme / "experts/foundation.jsonl")
    assert not any("SOP流程处理" in ex.input for ex in foundation_x)
    assert not any(re.search("步骤1:[^;]*;步骤2:[^;]*;步骤3:[^;]*;步骤4:", ex.output) for ex in foundation_x)
    assert all(ex.input.startswith("请按照SOP流程处理") for ex in load_jsonl(extreme / "test/sop_strict.jsonl"))
    sft = load_jsonl(seed0 / "experts/sft.jsonl")
    assert all(re.fullmatch("步骤1:[^;]+;步骤2:[^;]+;步骤3:[^;]+;步骤4:[^;]+", ex.output) for ex in sft)
    assert all(int(q) == 1 and int(x) == 0 for ex in sft for _, q, _, x in CALC.findall(ex.output))
    for ex in load_jsonl(seed0 / "test/mixed.jsonl"):
        (p, q, op, x), = CALC.findall(ex.output)
        assert int(q) >= 2 and int(x) >= 1 and ex.output.startswith("步骤1:")
    for ex in load_jsonl(seed0 / "test/reasoning.jsonl"):
        (p, q, op, x), = CALC.findall(ex.output)
        value = int(p) * int(q) + (int(x) if op == "+" else -int(x))
        assert ex.output.rstrip("元").endswith(f"={value}")


def test_shipped_task_data_is_the_seed0_test_split(seed0):
    for fam in FAMILIES:
        shipped = REPO / "tasks" / "data" / f"{fam}.jsonl"
        assert shipped.read_bytes() == (seed0 / f"test/{fam}.jsonl").read_bytes(), (
            f"{shipped} is stale: regenerate with `sopmoe make-data --out /tmp/d --seed 0` and copy test/*.jsonl"
        )


def test_make_data_command(tmp_path):
    from harness.cli import main

    assert main(["make-data", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert len(load_jsonl(tmp_path / "test" / "mixed.jsonl")) == 200
