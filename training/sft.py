"""``sopmoe sft``: make an SFT expert from a foundation checkpoint (issue 12): full fine-tune, or LoRA merged back.

The scenario's SFT: the foundation fine-tuned on SOP data only, with plain output-token cross-entropy, long enough that
it writes the strict format and forgets part of what it knew. The result is an ordinary model folder (saved in
the foundation's own dtype by default, as a real SFT is; training runs in float32. An update smaller than the saved
dtype's resolution rounds back to the foundation, so the card records how much of the update survived the rounding and
a warning says when much did not), with the foundation's tokenizer and an ``sft.json`` card (data, steps, losses, time, the foundation's fingerprint).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sopmoe_models.cards import SftCard
from sopmoe_models.data import encode_example, load_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTSpec:
    steps: int = 48
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    warmup_steps: int = 4
    max_length: int = 160
    prompt_format: str = "chat"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    save_dtype: str = "auto"  # auto (the foundation's stored dtype) | float32 | bfloat16 | float16


def saved_dtype(foundation: Path, name: str) -> torch.dtype:
    """The dtype the SFT folder is written in: ``auto`` = the foundation's ``config.json`` dtype (float32 if none)."""
    if name == "auto":
        import json

        cfg = json.loads((Path(foundation) / "config.json").read_text(encoding="utf-8"))
        name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"save_dtype {name!r}: choose auto, float32, bfloat16 or float16")
    return getattr(torch, name)


@torch.no_grad()
def update_kept(foundation: Path, model: torch.nn.Module, dtype: torch.dtype) -> float:
    """1 - |round(W) - W_f - ΔW| / |ΔW| over all weights: the share of the fine-tuning update ΔW = W - W_f that
    survives writing W in ``dtype`` (1.0 for float32)."""
    from safetensors.torch import load_file

    base: dict[str, torch.Tensor] = {}
    for f in sorted(Path(foundation).glob("*.safetensors")):
        base.update(load_file(f))
    err = norm = 0.0
    for name, w in model.state_dict().items():
        b = base.get(name)
        if b is None or b.shape != w.shape:
            continue
        delta = w.float() - b.float()
        err += float((w.to(dtype).float() - b.float() - delta).square().sum())
        norm += float(delta.square().sum())
    return 1.0 - (err / norm) ** 0.5 if norm > 0 else 1.0


def train_sft(foundation: str | Path, data_file: str | Path, out: str | Path, spec: SFTSpec = SFTSpec(),
              kinds: list[str] | None = None, progress=None) -> dict:
    """Fine-tune ``foundation`` on ``data_file`` and write the SFT folder ``out`` whole; return its card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sopmoe_models.experts import fingerprint
    from sopmoe_models.outputs import new_temp_dir, replace_dir, write_marker
    from training.testbed import fit

    foundation, out = Path(foundation), Path(out)
    examples = load_jsonl(data_file)
    if kinds:
        examples = [e for e in examples if e.category in kinds]
    if not examples:
        raise ValueError(f"{data_file}: no training rows (kinds {kinds})")
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    tokenizer = AutoTokenizer.from_pretrained(foundation)
    model = AutoModelForCausalLM.from_pretrained(foundation, dtype=torch.float32)
    encoded = [encode_example(tokenizer, e, style=spec.prompt_format, max_length=spec.max_length) for e in examples]
    if spec.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stats = fit(model, encoded, steps=spec.steps, lr=spec.learning_rate, weight_decay=spec.weight_decay,
                batch_size=spec.batch_size, warmup_steps=spec.warmup_steps, pad_id=pad, seed=spec.seed,
                progress=progress, desc="sft")
    if spec.lora:
        model = model.merge_and_unload()
    save_dtype = saved_dtype(foundation, spec.save_dtype)
    kept = update_kept(foundation, model, save_dtype)
    if kept < 0.9:
        log.warning("sft: saving in %s keeps %.0f%% of the update (the rest rounds back to the foundation); measure "
                    "the saved model, or pass --save_dtype float32 to keep all of it", str(save_dtype)[6:], 100 * kept)
    model = model.to(save_dtype)
    stats = {**stats, "save_dtype": str(save_dtype)[6:], "update_kept": round(kept, 4)}
    card = {
        "format": SftCard.FORMAT, "kind": "sft", "foundation": str(foundation.resolve()), "foundation_fingerprint":
        fingerprint(foundation), "data": str(Path(data_file).resolve()), "kinds": kinds, "rows": len(examples),
        "spec": asdict(spec), "training": stats,
        "wall_s": round(time.perf_counter() - t_wall, 1), "cpu_s": round(time.process_time() - t_cpu, 1),
        "threads": torch.get_num_threads(),
    }
    tmp = new_temp_dir(out)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        SftCard.from_dict(card).write(tmp / SftCard.FILE)
        write_marker(tmp, "sft")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("sft: %d steps on %d rows, loss %.4f, %.0f s -> %s", spec.steps, len(examples),
             stats["final_loss"], card["wall_s"], out)
    return card
