"""JSONL loading: every problem names file and line; tokenisation masks the prompt."""

import json

import pytest

from sopmoe_models.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    collate,
    encode_example,
    load_jsonl,
    write_jsonl,
)
from sopmoe_models.prompt import SEPARATOR, format_prompt
from tests import tiny


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"input": "a", "output": "b"}\n{"input": "a"\n', ":2: malformed JSON"),
        (b'{"input": "a"}\n', ":1: missing field 'output'"),
        (b'{"input": "a", "output": 3}\n', ":1: field 'output' must be a string"),
        (b'{"input": " ", "output": "b"}\n', ":1: field 'input' is empty"),
        (b'["a", "b"]\n', ":1: expected a JSON object"),
        (b'{"input": "a", "output": "b", "id": 7}\n', ":1: field 'id' must be a string"),
        (b"\n\n", "empty data file"),
        (b'{"input": "a", "output": "b"}\n{"input": "\xff", "output": "b"}\n', ":2: invalid UTF-8"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, content, message):
    p = tmp_path / "d.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_jsonl(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_jsonl(tmp_path / "none.jsonl")


def test_round_trip_keeps_optional_fields(tmp_path):
    exs = [Example("问", "答", id="x1", category="sop_strict"), Example("q", "a")]
    write_jsonl(tmp_path / "f.jsonl", exs)
    assert load_jsonl(tmp_path / "f.jsonl") == exs
    assert json.loads((tmp_path / "f.jsonl").read_text(encoding="utf-8").splitlines()[1]) == {"input": "q", "output": "a"}


def test_encode_masks_prompt_and_appends_eos():
    tok = tiny.make_tokenizer()
    ex = Example("计算 12+7", "12+7=19")
    enc = encode_example(tok, ex)
    n_prompt = len(tok(format_prompt(ex.input), add_special_tokens=False)["input_ids"])
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"][n_prompt:-1]) == ex.output
    assert format_prompt(ex.input).endswith(SEPARATOR)


def test_encode_truncates_from_the_left():
    tok = tiny.make_tokenizer()
    enc = encode_example(tok, Example("计算" * 50, "12+7=19"), max_length=12)
    assert len(enc["input_ids"]) == 12 and enc["input_ids"][-1] == tok.eos_token_id


def test_collate_pads_both_sides():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    right = collate(feats, pad_token_id=0)
    left = collate(feats, pad_token_id=0, padding_side="left")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist()[1] == [8, IGNORE_INDEX, IGNORE_INDEX]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_chat_format_needs_a_template():
    with pytest.raises(ValueError, match="chat template"):
        format_prompt("hi", "chat", tiny.make_tokenizer())
