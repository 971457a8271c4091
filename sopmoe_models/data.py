"""JSONL examples (``{"input", "output"}`` + optional ``id``/``category``) and their tokenisation.

The loader never skips a line silently: every problem names the file and the line. Tokenisation masks the prompt
(labels = -100) so loss and metrics are computed on output tokens only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sopmoe_models.errors import UserError
from sopmoe_models.outputs import atomic_path
from sopmoe_models.prompt import PromptFormat, format_prompt

IGNORE_INDEX = -100
# The scored families: one lm-eval task (tasks/sop_*.yaml) and one JSONL file (<family>.jsonl) each.
FAMILIES = ("sop_strict", "reasoning", "mixed", "eval")
REQUIRED = ("input", "output")
OPTIONAL = ("id", "category")
# Multiple-choice rows (the ``reasoning_mc`` family) also carry ``choices``: the answer and its distractors.
CHOICES = "choices"


class DataError(UserError):
    """A data file is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    id: str | None = None
    category: str | None = None
    choices: tuple[str, ...] | None = None  # multiple choice: the answer (``output``) among its distractors

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}


def load_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a JSONL file of examples; raise :class:`DataError` naming file and line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    examples: list[Example] = []
    # Lines end at "\n" only (JSONL): str.splitlines() would also split inside a JSON string at U+2028, U+2029,
    # U+0085, \v, \f or \x1c-\x1e, which json.dumps(ensure_ascii=False) writes raw, so valid files were rejected.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with 'input' and 'output'")
        for key in REQUIRED:
            if key not in obj:
                raise DataError(f"{path}:{lineno}: missing field '{key}'")
            if not isinstance(obj[key], str):
                raise DataError(f"{path}:{lineno}: field '{key}' must be a string, got {type(obj[key]).__name__}")
            if not obj[key].strip():
                raise DataError(f"{path}:{lineno}: field '{key}' is empty")
        for key in OPTIONAL:
            if key in obj and obj[key] is not None and not isinstance(obj[key], str):
                raise DataError(f"{path}:{lineno}: field '{key}' must be a string, got {type(obj[key]).__name__}")
        choices = obj.get(CHOICES)
        if choices is not None:
            if (not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip()
                                                                              for c in choices)):
                raise DataError(f"{path}:{lineno}: field '{CHOICES}' must be a list of at least two non-empty strings")
            if obj["output"] not in choices or len(set(choices)) != len(choices):
                raise DataError(f"{path}:{lineno}: field '{CHOICES}' must hold 'output' once among distinct options")
            choices = tuple(choices)
        examples.append(Example(**{k: obj.get(k) for k in REQUIRED + OPTIONAL}, choices=choices))
    if not examples:
        raise DataError(f"{path}: empty data file (no examples)")
    return examples


def load_training_examples(path: str | Path, kinds: list[str] | tuple[str, ...] | None) -> list[Example]:
    """The rows of ``path`` a trainer may see: those whose ``category`` (their *kind*) is in ``kinds``; every row
    when ``kinds`` is None. Composition stays zero-shot by naming the kinds (``data.train_kinds``), never by luck."""
    examples = load_jsonl(path)
    if kinds is None:
        return examples
    unlabelled = sum(ex.category is None for ex in examples)
    if unlabelled:
        raise DataError(f"{path}: {unlabelled} rows have no 'category' (their kind), but data.train_kinds names the "
                        f"kinds a trainer may see ({', '.join(kinds)}); label every row or set data.train_kinds: null")
    kept = [ex for ex in examples if ex.category in kinds]
    if not kept:
        found = sorted({ex.category for ex in examples})
        raise DataError(f"{path}: no row of the kinds in data.train_kinds ({', '.join(kinds)}); the file has "
                        f"{', '.join(found)}")
    return kept


def write_jsonl(path: str | Path, examples: list[Example]) -> None:
    """Write examples atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")


def encode_example(
    tokenizer: Any,
    example: Example,
    *,
    style: PromptFormat = "raw",
    max_length: int | None = None,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Token ids and labels for one example; labels are ``IGNORE_INDEX`` on the prompt.

    Prompt and output are encoded separately and concatenated, which is what lm-eval does for loglikelihood
    requests, so training and evaluation see the same token boundary.
    """
    prompt_ids = tokenizer(format_prompt(example.input, style, tokenizer), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(example.output, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + target_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    if max_length is not None and len(ids) > max_length:
        # Keep the end: the output is what we learn from, so drop prompt tokens from the left.
        ids, labels = ids[-max_length:], labels[-max_length:]
    return {"input_ids": ids, "labels": labels}


def collate(features: list[dict[str, list[int]]], pad_token_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad a list of encoded examples into tensors ``input_ids``, ``attention_mask``, ``labels`` of shape (B, T)."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = len(f["input_ids"])
        pad = width - n
        if padding_side == "right":
            out["input_ids"].append(f["input_ids"] + [pad_token_id] * pad)
            out["attention_mask"].append([1] * n + [0] * pad)
            out["labels"].append(f.get("labels", f["input_ids"]) + [IGNORE_INDEX] * pad)
        else:
            out["input_ids"].append([pad_token_id] * pad + f["input_ids"])
            out["attention_mask"].append([0] * pad + [1] * n)
            out["labels"].append([IGNORE_INDEX] * pad + f.get("labels", f["input_ids"]))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def output_mask(labels):
    """(B, T) labels with ``IGNORE_INDEX`` on prompt/padding -> (B, T-1) bool mask: position t predicts
    ``labels[t+1]``, an output token (not prompt, not padding). The one definition both trainers use."""
    return labels[:, 1:] != IGNORE_INDEX
