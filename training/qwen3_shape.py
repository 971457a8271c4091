"""A tiny random-weight pair in Qwen3's exact shape: Qwen3's real tokenizer (151,669 tokens, chat template with
thinking), an output layer padded to 151,936 rows, bf16 weights, EOS ids and generation config as Qwen3's.

Only the transformer body is tiny (hidden 32, 2 layers, odd intermediate 37), so every command runs on it in seconds
while the vocabulary-sized tensors — embeddings, lm_head, (B, T, 151,936) log-probs, top-k teacher caches — have
their real size. The sft is the foundation with perturbed weights, as a fine-tune would be.

``padded_mass`` scales the 267 padded lm_head rows up so they carry real probability mass (in a trained checkpoint
they carry almost none: they are never targets). That is the pair on which the parity rule
(:mod:`sopmoe_models.experts`) is tested: renormalising over the tokenizer's 151,669 ids instead of all 151,936 rows
differs from ``--model hf`` there by nats per request.

:func:`build_bed` adds a little data (a slice of the shipped task data, Chinese SOP text that Qwen3's BPE splits
into a few tokens per character) and a ``config.yaml`` (bf16 experts, ``prompt_format: chat``), so every ``sopmoe``
command and ``lm_eval --model sopmoe_*`` runs on it as on a real Qwen3 pair: ``sopmoe qwen3-shape --out DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from training.qwen3_tokenizer import PADDED_ROWS


def make_model(tokenizer, seed: int, *, rows: int = PADDED_ROWS, hidden: int = 32, layers: int = 2,
               head_scale: float = 1.0, padded_scale: float = 1.0, shape: dict | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """A random ``Qwen3ForCausalLM`` over ``tokenizer`` with ``rows`` output rows, built directly on ``device`` in
    ``dtype`` (default: the CPU, float32). ``shape`` overrides the tiny body's config keys, e.g. Qwen3-8B's
    (``benchmarks/gpu_check.py``)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id
    torch.manual_seed(seed)
    body = {"hidden_size": hidden, "intermediate_size": 37, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 1024, **(shape or {})}
    cfg = Qwen3Config(vocab_size=rows, tie_word_embeddings=False, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                      **body)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are made in dtype where they live: no float32 copy of an 8B model
    try:
        with torch.device(device or "cpu"):
            model = Qwen3ForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = [eos, pad]  # Qwen3's: <|im_end|> and <|endoftext|>
    model.generation_config.pad_token_id = pad
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        model.lm_head.weight[len(tokenizer):].mul_(padded_scale)
    return model


def build_pair(out: str | Path, tokenizer_dir: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
               hidden: int = 32, head_scale: float = 1.0, padded_scale: float = 1.0,
               shape: dict | None = None) -> tuple[Path, Path]:
    """Save ``out/foundation`` and ``out/sft`` (weights in ``dtype``, Qwen3's tokenizer beside each)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    kw = {"hidden": hidden, "head_scale": head_scale, "padded_scale": padded_scale, "shape": shape}
    foundation, sft = make_model(tok, seed, **kw), make_model(tok, seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sft.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g) * p.std().clamp(min=1e-3))
    dirs = (Path(out) / "foundation", Path(out) / "sft")
    for model, d in zip((foundation, sft), dirs):
        model.to(dtype).save_pretrained(d)
        tok.save_pretrained(d)
    return dirs


SHIPPED = Path(__file__).resolve().parents[1] / "tasks" / "data"


def write_data(out: str | Path, *, train: int = 4, dev: int = 2, test: int = 2) -> dict[str, Path]:
    """Disjoint slices of the shipped task data: ``train.jsonl``, ``eval.jsonl`` (dev) and ``tasks/FAMILY.jsonl``."""
    from sopmoe_models.data import FAMILIES, load_jsonl, write_jsonl

    out = Path(out)
    rows = {f: load_jsonl(SHIPPED / f"{f}.jsonl") for f in FAMILIES}
    paths = {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    write_jsonl(paths["train"], [ex for f in FAMILIES if f != "mixed" for ex in rows[f][:train]])  # zero-shot mixed
    write_jsonl(paths["eval"], [ex for f in FAMILIES for ex in rows[f][train : train + dev]])
    for f in FAMILIES:
        paths[f] = out / "tasks" / f"{f}.jsonl"
        write_jsonl(paths[f], rows[f][train + dev : train + dev + test])
    return paths


def write_config(out: str | Path, *, prompt_format: str = "chat", max_length: int = 128) -> Path:
    """A sopmoe config for the bed at ``out``: bf16 experts on the CPU, small runs, relative paths."""
    from sopmoe_models.config import SopmoeConfig, load_config

    expert = {"dtype": "bfloat16", "device": "cpu"}
    cfg = SopmoeConfig.model_validate({
        "models": {"foundation": {"path": "foundation", **expert}, "sft": {"path": "sft", **expert}},
        "data": {"train_file": "data/train.jsonl", "eval_file": "data/eval.jsonl", "task_data_dir": "data/tasks",
                 "prompt_format": prompt_format, "max_length": max_length},
        "generation": {"max_new_tokens": 8, "batch_size": 4},
        "btm": {"router_type": "token_level", "router_hidden_size": 8, "num_epochs": 1, "batch_size": 4,
                "output_dir": "checkpoints/btm"},
        "distill": {"num_epochs": 1, "batch_size": 4, "teacher_cache_topk": 8, "output_dir": "checkpoints/distill"},
        "merge": {"output_dir": "merged"},
        "evaluation": {"batch_size": 4, "limit": 2, "output_dir": "eval"},
    }).to_dict()
    path = Path(out) / "config.yaml"
    header = "# generated by `sopmoe qwen3-shape`; relative paths resolve against this file's folder\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    load_config(path)
    return path


def build_bed(out: str | Path, tokenizer_dir: str | Path, *, seed: int = 0, padded_scale: float = 1.0,
              prompt_format: str = "chat") -> dict[str, str]:
    """The pair, its data and ``config.yaml`` under ``out``; returns their paths (also written to ``bed.json``)."""
    out = Path(out)
    foundation, sft = build_pair(out, tokenizer_dir, seed=seed, padded_scale=padded_scale)
    data = write_data(out / "data")
    record = {"foundation": str(foundation), "sft": str(sft), "config": str(write_config(out, prompt_format=prompt_format)),
              "tokenizer": str(tokenizer_dir), "rows": PADDED_ROWS, "padded_scale": padded_scale, "seed": seed,
              **{k: str(v) for k, v in data.items()}}
    (out / "bed.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
