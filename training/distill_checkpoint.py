"""Checkpoints of a distillation run (safetensors + JSON, never pickles) and the saved student.

``<output_dir>/checkpoint/`` (the last one, for ``--resume``):
- ``trainable.safetensors``: the student's trainable tensors (all weights, or only the LoRA ones);
- ``optimizer.safetensors``: AdamW's ``exp_avg``/``exp_avg_sq``/``step`` per parameter (``state.<i>.<name>``);
- ``state.json``: epoch, batches done in it, optimizer steps, running sums, metrics so far, best eval loss, times.
A checkpoint folder is written as ``checkpoint.tmp`` and renamed, so a kill leaves the previous one intact.

``<output_dir>/best_student/``: a plain Hugging Face folder (``save_pretrained`` safetensors + tokenizer +
``distill.json``), also swapped in by rename. LoRA runs keep ``best_adapter.safetensors`` (the LoRA tensors of the
best epoch) and merge it into the base weights (``merge_and_unload``) when the run ends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT = "checkpoint"
BEST_STUDENT = "best_student"
BEST_ADAPTER = "best_adapter.safetensors"
CARD = "distill.json"


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def swap_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` with renames only (the old folder is removed after the new one is in place)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors))[:3], sorted(set(tensors) - set(params))[:3]
        raise ValueError(
            f"{source}: checkpoint does not fit this student (missing {missing}, unexpected {extra}); "
            "resume with the same student_init and lora settings, or start without --resume"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.device, p.dtype))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    sd = optimizer.state_dict()
    out = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"state.{idx}.{name}"] = t.detach().to("cpu").contiguous()
    return out


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    sd["state"] = state
    optimizer.load_state_dict(sd)


def save_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> Path:
    from safetensors.torch import save_file

    tmp = out_dir / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    save_file(optimizer_tensors(optimizer), str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", state)
    final = out_dir / CHECKPOINT
    swap_dir(tmp, final)
    return final


def load_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """Restore model and optimizer from ``<out_dir>/checkpoint``; returns its state, or None when there is none."""
    from safetensors.torch import load_file

    ckpt = out_dir / CHECKPOINT
    if not (ckpt / "state.json").is_file():
        old = out_dir / (CHECKPOINT + ".old")  # killed between the two renames of swap_dir
        if (old / "state.json").is_file():
            ckpt = old
        else:
            return None
    load_trainable(model, load_file(str(ckpt / "trainable.safetensors")), ckpt)
    load_optimizer(optimizer, load_file(str(ckpt / "optimizer.safetensors")))
    return json.loads((ckpt / "state.json").read_text())


def save_student(model: nn.Module, tokenizer, out_dir: Path, card: dict) -> Path:
    """Write ``<out_dir>/best_student`` as a plain HF folder (safetensors) with ``distill.json``, atomically."""
    tmp = out_dir / (BEST_STUDENT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    write_json(tmp / CARD, card)
    final = out_dir / BEST_STUDENT
    swap_dir(tmp, final)
    return final


def merged_student(peft_model: nn.Module, adapter_file: Path) -> nn.Module:
    """Load the best LoRA tensors into ``peft_model`` and fold them into the base weights (merge_and_unload)."""
    from safetensors.torch import load_file

    load_trainable(peft_model, load_file(str(adapter_file)), adapter_file)
    return peft_model.merge_and_unload()
