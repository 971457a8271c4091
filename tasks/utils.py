"""Data loading and metrics for sopmoe's lm-eval tasks (``sop_strict``, ``reasoning``, ``mixed``, ``eval`` and
their ``*_gen`` generation variants).

Data: ``custom_dataset`` resolves the folder from ``--metadata data_dir=DIR`` (or ``'{"data_dir": "DIR"}'``),
then ``$SOPMOE_DATA_DIR``, then the shipped default ``tasks/data`` (the generator's test split for seed 0), so the
tasks work from any working directory. The prompt is built by :func:`sopmoe_models.prompt.format_prompt`, the
same function training and generation use (``--metadata prompt_format=chat`` for chat checkpoints).

Per-token perplexity: lm-eval's own ``perplexity`` is exp(-mean per-document log-likelihood). We want
exp(-Σ ll / Σ n_tokens), so each doc carries the number of target tokens and ``process_results_ll`` returns
``(ll, n_tokens)`` for lm-eval's ``weighted_perplexity`` aggregation. Counting needs the evaluated model's
tokenizer: it is read (locally, never downloaded) from the model arguments lm-eval passes as metadata
(``tokenizer``, ``pretrained``, ``foundation``, ``student``, a router's ``router.json``, a dispatch classifier's
``dispatch.json``, or ``config``). Tokens are counted as lm-eval splits them: len(enc(prompt + target)) -
len(enc(prompt.rstrip())). When no local tokenizer can be found the task refuses to load (there is no character-count
fallback: a perplexity over characters would be another metric under the same name); pass
``--metadata '{"tokenizer": "DIR"}'``.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

from sopmoe_models.data import FAMILIES

DEFAULT_DIR = Path(__file__).resolve().parent / "data"
STEP = re.compile(r"步骤\s*(\d+)|[Ss]tep\s*(\d+)")


def data_dir(meta: dict) -> Path:
    d = meta.get("data_dir") or os.environ.get("SOPMOE_DATA_DIR") or DEFAULT_DIR
    return Path(str(d)).expanduser()


def _tokenizer_source(meta: dict) -> str | None:
    for key in ("tokenizer", "pretrained", "foundation", "student"):
        value = meta.get(key)
        if isinstance(value, str) and Path(value).expanduser().is_dir():
            return str(Path(value).expanduser())
    for key, card_name in (("router", "router.json"), ("classifier", "dispatch.json")):
        value = meta.get(key)
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            card = (p if p.is_dir() else p.parent) / card_name
            if card.is_file():
                try:  # a broken card is reported by its loader (one line); here it only means "no hint"
                    path = json.loads(card.read_text(encoding="utf-8"))["experts"]["foundation"]["path"]
                except (OSError, ValueError, KeyError, TypeError):
                    path = None
                if isinstance(path, str) and Path(path).is_dir():
                    return path
    cfg = meta.get("config")
    if isinstance(cfg, str) and Path(cfg).is_file():
        from sopmoe_models.config import load_config

        path = load_config(cfg).models.foundation.path
        if path and Path(path).is_dir():
            return path
    return None


@lru_cache(maxsize=4)
def _tokenizer(source: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=False)


def load(family: str, **meta):
    """A ``DatasetDict`` with one ``test`` split; each doc has ``prompt``, ``output`` and ``n_target_tokens``."""
    import datasets

    from sopmoe_models.data import load_jsonl
    from sopmoe_models.prompt import format_prompt

    path = data_dir(meta) / f"{family}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"sopmoe task {family!r}: {path} not found; pass --metadata data_dir=DIR (a folder with "
            f"{', '.join(f + '.jsonl' for f in FAMILIES)}) or set SOPMOE_DATA_DIR"
        )
    style = meta.get("prompt_format", "raw")
    source = _tokenizer_source(meta)
    if source is None:
        raise ValueError(
            f"sopmoe task {family!r}: per-token perplexity counts the evaluated model's own tokens, but no local "
            "tokenizer was found in the model arguments (tokenizer=, pretrained=, foundation=, student=, router= or "
            "config=); pass --metadata '{\"tokenizer\": \"DIR\"}' with the model's folder"
        )
    tok = _tokenizer(source)
    rows = []
    for i, ex in enumerate(load_jsonl(path)):
        prompt = format_prompt(ex.input, style, tok)
        # lm-eval's split (LM._encode_pair): the context's trailing whitespace (a chat prompt's final "\n") moves
        # to the continuation, whose tokens are those of the whole string past the stripped context's
        whole = tok(prompt + ex.output, add_special_tokens=False)["input_ids"]
        n = len(whole) - len(tok(prompt.rstrip(), add_special_tokens=False)["input_ids"])
        rows.append(
            {
                "id": ex.id or f"{family}-{i}",
                "category": ex.category or family,
                "input": ex.input,
                "prompt": prompt,
                "output": ex.output,
                "n_target_tokens": max(n, 1),
            }
        )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_sop_strict(**meta):
    return load("sop_strict", **meta)


def load_reasoning(**meta):
    return load("reasoning", **meta)


def load_mixed(**meta):
    return load("mixed", **meta)


def load_eval(**meta):
    return load("eval", **meta)


def load_reasoning_mc(**meta):
    """``reasoning_mc``: ``reasoning_mc.jsonl`` of the data folder (rows with ``choices``), as a ``DatasetDict`` whose
    docs have ``context`` (:data:`MC_FRAME`), ``choices`` and ``gold`` (the answer's index)."""
    import datasets

    from sopmoe_models.data import load_jsonl
    from sopmoe_models.prompt import MC_FRAME

    path = data_dir(meta) / "reasoning_mc.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"sopmoe task 'reasoning_mc': {path} not found; it is written by `sopmoe realbed` "
                                "(the reasoning family as multiple choice); pass --metadata data_dir=DIR")
    rows = []
    for i, ex in enumerate(load_jsonl(path)):
        if not ex.choices:
            raise ValueError(f"{path}: row {i + 1} has no 'choices' (the answer among its distractors)")
        rows.append({"id": ex.id or f"reasoning_mc-{i}", "category": ex.category or "reasoning",
                     "context": MC_FRAME.format(question=ex.input), "choices": list(ex.choices),
                     "gold": ex.choices.index(ex.output)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results_ll(doc: dict, results: list) -> dict:
    """``acc``: the whole target is the greedy continuation; ``perplexity``: (ll, n_tokens) for per-token ppl."""
    ll, is_greedy = results[0]
    return {"acc": int(is_greedy), "perplexity": (ll, doc["n_target_tokens"])}


def steps(text: str) -> list[str]:
    """The step labels of an SOP answer, in order ("步骤1", "步骤2", ... or "Step 1", ...)."""
    return [a or b for a, b in STEP.findall(text)]


ORDER_ID = re.compile(r"\b[A-Z]{1,3}\d{3,}\b|(?<![A-Za-z0-9])[A-Z]\d{4}(?!\d)")
AMOUNT = re.compile(r"(\d+(?:\.\d+)?)\s*元|[$€£¥]\s*(\d+(?:\.\d+)?)")


def step_bodies(text: str) -> list[str]:
    """The text after each step label, up to the next label (stripped of separators)."""
    marks = list(STEP.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end() : end].strip(" :：;；,，.。\n\t") for m, end in zip(marks, ends)]


def content_keys(reference: str) -> list[str]:
    """What a step's content must carry, read from the reference: its order ids and its final amounts."""
    ids = [m.group(0) for m in ORDER_ID.finditer(reference)]
    amounts = [a or b for a, b in AMOUNT.findall(reference)]
    return ids + amounts


def format_ok(prediction: str, reference: str) -> int:
    """1 when the prediction has exactly the reference's SOP steps in order (at least one), every step has content,
    and the content the reference carries (order ids, final amounts) is there; else 0. Markers alone
    ("步骤1步骤2步骤3步骤4") are not the format."""
    ref = steps(reference)
    if not ref or steps(prediction) != ref:
        return 0
    if not all(step_bodies(prediction)):
        return 0
    return int(all(key in prediction for key in content_keys(reference)))


def process_results_gen_sop(doc: dict, results: list) -> dict:
    pred = results[0].strip()
    return {"exact_match": int(pred == doc["output"].strip()), "format_ok": format_ok(pred, doc["output"])}


def process_results_gen_plain(doc: dict, results: list) -> dict:
    return {"exact_match": int(results[0].strip() == doc["output"].strip())}
