"""Typed artefact cards: one class per JSON card, versioned, old cards still read, the JSON as it was written."""

from __future__ import annotations

import json

import pytest

from sopmoe_models.cards import (
    CARDS,
    BedCard,
    CardError,
    DispatchCard,
    DistillCard,
    MergeCard,
    RouterCard,
    SftCard,
)


def test_a_new_card_records_its_format_first_and_keeps_the_key_order(tmp_path):
    card = DistillCard.new(kind="sopmoe_distill", teacher={"type": "ensemble"}, best={"epoch": 1, "score": 0.5},
                           wall_time_s=3, cpu_time_s=1.25, config={"data": {"train_file": "/d/train.jsonl"}})
    path = card.write(tmp_path / "distill.json")
    text = path.read_text(encoding="utf-8")
    expected = {"format": DistillCard.FORMAT, "kind": "sopmoe_distill", "teacher": {"type": "ensemble"},
                "best": {"epoch": 1, "score": 0.5}, "wall_time_s": 3, "cpu_time_s": 1.25,
                "config": {"data": {"train_file": "/d/train.jsonl"}}}
    assert text == json.dumps(expected, indent=2, ensure_ascii=False) + "\n"  # write_json's bytes, an int stays an int
    again = DistillCard.read(path)
    assert again == card and again.to_dict() == expected
    assert again.wall_time_s() == 3.0 and again.teacher_type() == "ensemble"
    assert again.training_data() == {"train_file": "/d/train.jsonl"}


def test_an_old_card_without_format_reads_and_rewrites_unchanged(tmp_path):
    old = {"type": "token_level", "kwargs": {"hidden_size": 8}, "gate_names": None, "experts": {},
           "metrics": {"train_seconds": 1.5, "eval": {"nll": float("nan")}}, "custom": [1, 2]}
    (tmp_path / "router.json").write_text(json.dumps(old, indent=2), encoding="utf-8")
    card = RouterCard.read(tmp_path / "router.json")
    assert card.format is None and card.wall_time_s() == 1.5 and card["custom"] == [1, 2]
    card.write(tmp_path / "again.json")
    assert json.dumps(json.loads((tmp_path / "again.json").read_text())) == json.dumps(old)  # NaN stays NaN


@pytest.mark.parametrize("cls, record, wall", [
    (RouterCard, {"type": "posterior", "metrics": {"train_seconds": 2}}, 2.0),
    (DistillCard, {"wall_time_s": 4.5}, 4.5),
    (MergeCard, {"method": "ties", "wall_time_s": 0.25}, 0.25),
    (DispatchCard, {"type": "dispatch", "train_seconds": 7}, 7.0),
    (SftCard, {"kind": "sft", "wall_s": 9.0}, 9.0),
    (BedCard, {"preset": "partial", "times": {"sft": {"wall_s": 1.0}, "total": {"wall_s": 11.5}}}, 11.5),
    (DistillCard, {"wall_time_s": True}, None),
    (RouterCard, {"type": "posterior"}, None),
])
def test_one_wall_time_accessor_per_card(cls, record, wall):
    assert cls.from_dict(record).wall_time_s() == wall
    assert CARDS[cls.FILE] is cls


def test_a_broken_card_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "merge.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(CardError, match=r"merge.json: not valid JSON"):
        MergeCard.read(tmp_path / "merge.json")
    (tmp_path / "sft.json").write_bytes(b'{"kind": "\xff"}')
    with pytest.raises(CardError, match=r"sft.json: not UTF-8 text \(byte 10\)$"):
        SftCard.read(tmp_path / "sft.json")
    with pytest.raises(CardError, match=r"not a sopmoe merge card: 'method'"):
        MergeCard.from_dict({"inputs": {}}, "x/merge.json")
    with pytest.raises(CardError, match="top level is not an object"):
        DistillCard.from_dict([], "d.json")
    assert DistillCard.in_folder(tmp_path) is None


def test_a_bed_card_reads_an_unversioned_testbed_json_and_answers_the_beds_questions(tmp_path):
    """``testbed.json`` of both beds: written before cards were versioned it reads and rewrites unchanged; a new one
    records its format first and is otherwise the record as the builder gave it."""
    old = {"seed": 0, "preset": "real", "size": "ci", "sweep_split": "dev", "foundation_source": "x",
           "spec": {"weights": [0.3, 0.8]}, "threads": 2,
           "times": {"sft": {"wall_s": 5.5, "cpu_s": 5.0}, "total": {"wall_s": 9.0, "cpu_s": 8.0}},
           "sweep": {"mixed": {"foundation": {"acc": 0.0}, "sft": {"acc": float("nan")}}},
           "properties": [{"property": "a", "value": 1.0, "margin": 0.1, "passed": True},
                          {"property": "b", "value": 0.0, "margin": -0.2, "passed": False}],
           "passed": False}
    (tmp_path / "testbed.json").write_text(json.dumps(old, indent=2), encoding="utf-8")
    card = BedCard.in_folder(tmp_path)
    assert card.format is None and card.is_real() and card.stage_wall_s("sft") == 5.5
    assert card.stage_wall_s("pretrain") is None and card.wall_time_s() == 9.0
    assert [p["property"] for p in card.failed_properties()] == ["b"]
    card.write(tmp_path / "again.json")
    assert json.dumps(json.loads((tmp_path / "again.json").read_text())) == json.dumps(old)
    new = BedCard.new(**old).write(tmp_path / "new.json").read_text(encoding="utf-8")
    assert new == json.dumps({"format": BedCard.FORMAT, **old}, indent=2, ensure_ascii=False) + "\n"
    with pytest.raises(CardError, match="not a sopmoe bed card: 'times'"):
        BedCard.from_dict({"times": [1]}, "tb/testbed.json")
