"""The data generator: deterministic, split by problem, valid, and the shipped task data is its seed-0 output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sopmoe_models.data import load_jsonl
from training.datagen import FAMILIES, make_data

REPO = Path(__file__).resolve().parents[1]
TRAINING_FILES = ("train/train.jsonl", "experts/foundation.jsonl", "experts/sft.jsonl")
EVAL_FILES = tuple(f"eval/{fam}.jsonl" for fam in FAMILIES)
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
    assert other["eval/mixed.jsonl"].read_bytes() != (seed0 / "eval/mixed.jsonl").read_bytes()


def test_no_problem_is_shared_between_train_and_eval(seed0):
    train_orders, train_calcs = set(), set()
    for name in TRAINING_FILES:
        o, c = _problems(seed0 / name)
        train_orders |= o
        train_calcs |= c
    train_inputs = {ex.input for name in TRAINING_FILES for ex in load_jsonl(seed0 / name)}
    for name in EVAL_FILES:
        orders, calcs = _problems(seed0 / name)
        assert orders or calcs, f"{name}: no problem found (did the templates change?)"
        assert not orders & train_orders, f"{name} shares order ids with training data"
        assert not calcs & train_calcs, f"{name} shares arithmetic problems with training data"
        assert not {ex.input for ex in load_jsonl(seed0 / name)} & train_inputs


def test_files_are_valid_and_labelled(seed0):
    for fam in FAMILIES:
        examples = load_jsonl(seed0 / f"eval/{fam}.jsonl")
        assert len(examples) == 200
        assert {ex.category for ex in examples} == {fam}
        assert len({ex.id for ex in examples}) == len(examples)
    train = load_jsonl(seed0 / "train/train.jsonl")
    assert {ex.category for ex in train} == set(FAMILIES)
    assert len({ex.id for ex in train}) == len(train)
    for path in seed0.rglob("*.jsonl"):
        for ex in load_jsonl(path):
            assert ex.id and ex.category
            assert "\n" not in ex.input + ex.output, f"{path}: {ex.id} is multi-line"


def test_families_have_their_design(seed0):
    """Strict SOP only in the SFT corpus (trivial money formulas); its marks never in the foundation's; mixed needs maths."""
    foundation = load_jsonl(seed0 / "experts/foundation.jsonl")
    assert not any("SOP流程处理" in ex.input for ex in foundation)
    assert not any(re.search("步骤1:[^;]*;步骤2:[^;]*;步骤3:[^;]*;步骤4:", ex.output) for ex in foundation)
    assert any("退款金额" in ex.output and CALC.search(ex.output) for ex in foundation)  # loose SOP shows its work
    sft = load_jsonl(seed0 / "experts/sft.jsonl")
    assert all(re.fullmatch("步骤1:[^;]+;步骤2:[^;]+;步骤3:[^;]+;步骤4:[^;]+", ex.output) for ex in sft)
    assert all(int(q) == 1 and int(x) == 0 for ex in sft for _, q, _, x in CALC.findall(ex.output))
    for ex in load_jsonl(seed0 / "eval/mixed.jsonl"):
        (p, q, op, x), = CALC.findall(ex.output)
        assert int(q) >= 2 and int(x) >= 1 and ex.output.startswith("步骤1:")
    for ex in load_jsonl(seed0 / "eval/reasoning.jsonl"):
        (p, q, op, x), = CALC.findall(ex.output)
        value = int(p) * int(q) + (int(x) if op == "+" else -int(x))
        assert ex.output.rstrip("元").endswith(f"={value}")


def test_shipped_task_data_is_the_seed0_eval_split(seed0):
    for fam in FAMILIES:
        shipped = REPO / "tasks" / "data" / f"{fam}.jsonl"
        assert shipped.read_bytes() == (seed0 / f"eval/{fam}.jsonl").read_bytes(), (
            f"{shipped} is stale: regenerate with `sopmoe make-data --out /tmp/d --seed 0` and copy eval/*.jsonl"
        )


def test_make_data_command(tmp_path):
    from harness.cli import main

    assert main(["make-data", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert len(load_jsonl(tmp_path / "eval" / "mixed.jsonl")) == 200
