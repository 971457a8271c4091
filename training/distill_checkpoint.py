"""Checkpoints of a distillation run (safetensors + JSON, never pickles) and the saved student.

``<output_dir>/checkpoint/`` (the last one, for ``--resume``):
- ``trainable.safetensors``: the student's trainable tensors (all weights, or only the LoRA ones);
- ``optimizer.safetensors``: AdamW's ``exp_avg``/``exp_avg_sq``/``step`` per parameter (``state.<i>.<name>``);
- ``state.json``: epoch, batches done in it, optimizer steps, running sums, metrics so far, best eval loss, times,
  and ``files`` (each tensor file's size and the step written into its metadata).
A checkpoint folder is written whole in a hidden temporary sibling and renamed into place
(:func:`sopmoe_models.outputs.replace_dir`), so a kill leaves the previous one intact; :func:`load_checkpoint` checks
that every file is there, has the recorded size and was written at the state's step before a run resumes from it.

``<output_dir>/best_student/``: a plain Hugging Face folder (``save_pretrained`` safetensors + tokenizer +
``distill.json``), also swapped in by rename. LoRA runs keep ``best_adapter.safetensors`` (the LoRA tensors of the
best epoch) and merge it into the base weights (``merge_and_unload``) when the run ends.

The run folder as a whole: :func:`guard_run_folder` refuses to replace a run (``checkpoint/``, ``best_student/``,
``distill.json``, ``best_adapter.safetensors``) unless resumed or overwritten (the keyed ``teacher_cache/`` is kept:
it is only ever reused for the same teacher and data), and :func:`data_identity` (the sha256 of the training and eval
files, stored in ``state.json``) is compared on resume.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sopmoe_models.cards import DistillCard
from sopmoe_models.errors import UserError
from sopmoe_models.outputs import file_sha256, leftovers, new_temp_dir, overlaps, replace_dir
from training.toolkit import optimizer_tensors, read_state, restore_optimizer, write_json

if TYPE_CHECKING:
    from sopmoe_models.config import SopmoeConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST_STUDENT = "best_student"
BEST_ADAPTER = "best_adapter.safetensors"
CARD = DistillCard.FILE  # distill.json


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


TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors")
STATE = "state.json"
STATE_KEYS = ("epoch", "batch", "step", "history", "config")  # what a resume needs


def save_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> Path:
    from safetensors.torch import save_file

    final = out_dir / CHECKPOINT
    tmp = new_temp_dir(final)
    step = {"step": str(state.get("step"))}
    save_file(trainable_state(model), str(tmp / TENSOR_FILES[0]), metadata=step)
    save_file(optimizer_tensors(optimizer)[0], str(tmp / TENSOR_FILES[1]), metadata=step)
    files = {name: (tmp / name).stat().st_size for name in TENSOR_FILES}
    write_json(tmp / STATE, {**state, "files": files})
    return replace_dir(tmp, final)


def checkpoint_folder(out_dir: Path) -> Path | None:
    """``<out_dir>/checkpoint``, or the previous one a kill between two renames left aside; None when neither."""
    ckpt = out_dir / CHECKPOINT
    if (ckpt / STATE).is_file():
        return ckpt
    aside = [p for p in [*leftovers(out_dir, CHECKPOINT, "old"), out_dir / (CHECKPOINT + ".old")] if (p / STATE).is_file()]
    return aside[-1] if aside else None


def check_checkpoint(ckpt: Path, state: dict) -> None:
    """Refuse a torn checkpoint: each tensor file present, of the recorded size, written at the state's step."""
    from safetensors import safe_open

    files = state.get("files")
    if not isinstance(files, dict):  # written before checkpoints were checked: files must at least be there
        files = {name: None for name in TENSOR_FILES}
    for name, size in files.items():
        f = ckpt / name
        problem = None
        if not f.is_file():
            problem = "is missing"
        elif size is not None and f.stat().st_size != size:
            problem = f"has {f.stat().st_size} bytes, {STATE} recorded {size}"
        else:
            try:
                with safe_open(str(f), framework="pt") as h:
                    step = (h.metadata() or {}).get("step")
            except Exception as e:  # SafetensorError: truncated or not safetensors
                problem = f"is unreadable ({e})"
            else:
                if step is not None and step != str(state.get("step")):
                    problem = f"was written at step {step}, {STATE} is at step {state.get('step')}"
        if problem:
            raise UserError(f"--resume: {f} {problem}: the checkpoint is torn or damaged; start again with --overwrite")


def load_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """Restore model and optimizer from ``<out_dir>/checkpoint`` (checked whole first); returns its state, or None
    when there is none."""
    from safetensors.torch import load_file

    ckpt = checkpoint_folder(out_dir)
    if ckpt is None:
        return None
    state = read_state(ckpt / STATE, STATE_KEYS, "distillation state")
    check_checkpoint(ckpt, state)
    load_trainable(model, load_file(str(ckpt / TENSOR_FILES[0])), ckpt)
    restore_optimizer(optimizer, load_file(str(ckpt / TENSOR_FILES[1])))  # keeps the optimizer's own param groups
    state.pop("files", None)
    return state


def save_student(model: nn.Module, tokenizer, out_dir: Path, card: DistillCard, moe_source: Path | None = None) -> Path:
    """Write ``<out_dir>/best_student`` as a plain HF folder (safetensors) with ``distill.json``, atomically.

    An MoE student (``moe_source``: the checkpoint it started from) is written as that checkpoint was: its stored dtype,
    its own ``config.json`` (the top-k it is served with, the hub's key spelling) and ``moe.json`` with the training
    recorded (:func:`sopmoe_models.moe.finish_trained`)."""
    from sopmoe_models.moe import finish_trained, stored_dtype

    final = out_dir / BEST_STUDENT
    tmp = new_temp_dir(final)
    if moe_source is None:
        model.save_pretrained(str(tmp), safe_serialization=True)
    else:
        dtype = stored_dtype(moe_source)
        model.save_pretrained(str(tmp), safe_serialization=True,
                              state_dict={k: v.to(dtype) for k, v in model.state_dict().items()})
    tokenizer.save_pretrained(str(tmp))
    card.write(tmp / CARD)
    if moe_source is not None:
        finish_trained(tmp, moe_source, card.to_dict())
    return replace_dir(tmp, final)


def merged_student(peft_model: nn.Module, adapter_file: Path) -> nn.Module:
    """Load the best LoRA tensors into ``peft_model`` and fold them into the base weights (merge_and_unload)."""
    from safetensors.torch import load_file

    load_trainable(peft_model, load_file(str(adapter_file)), adapter_file)
    return peft_model.merge_and_unload()


# --- the run folder ------------------------------------------------------------------------------------------------
TRAINED = (BEST_STUDENT, CHECKPOINT, CARD, BEST_ADAPTER)  # what a run leaves in its folder


def guard_run_folder(cfg: SopmoeConfig, out_dir: Path, *, resume: bool, overwrite: bool, main: bool = True) -> None:
    """Refuse to replace a trained student in ``out_dir`` unless asked (``resume``: continue its checkpoint;
    ``overwrite``: delete the run's own files, on the main process). ``out_dir`` may not be or hold an input."""
    d = cfg.distill
    inputs = [cfg.models.foundation.path, cfg.models.sft.path, cfg.data.train_file, cfg.data.eval_file, d.btm_router,
              d.student_init if d.student_init not in ("foundation", "sft") else None]
    hit = overlaps(out_dir, inputs)
    if hit:
        raise UserError(f"--output_dir {out_dir} is or contains an input ({hit[0]}); choose another folder")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: continue the run, or replace it")
    found = [name for name in TRAINED if (out_dir / name).exists()] + [p.name for p in leftovers(out_dir, CHECKPOINT, "old")]
    if not found:
        return
    if overwrite:
        log.warning("--overwrite: replacing the distillation run in %s (%s)", out_dir, ", ".join(found))
        if main:
            for name in [*TRAINED, *found]:
                p = out_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        return
    if not resume:
        raise UserError(f"{out_dir} already holds a distillation run ({', '.join(found)}); pass --resume to continue "
                        "it, --overwrite to replace it, or choose another --output_dir")
    if checkpoint_folder(out_dir) is None:
        raise UserError(f"--resume: {out_dir} holds a trained student but no checkpoint to continue from; keep it "
                        "(choose another --output_dir) or replace it with --overwrite")


def data_identity(cfg: SopmoeConfig) -> dict[str, Any]:
    """What the data is, byte for byte: a resumed run must see the same files, not only the same paths."""
    d = cfg.data
    return {"train_file_sha256": file_sha256(d.train_file),
            "eval_file_sha256": file_sha256(d.eval_file) if d.eval_file else None}
