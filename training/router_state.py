"""Resumable training state for the router trainer, without pickles (DESIGN §6, STYLE "checkpoints").

``<output_dir>/last/`` holds ``router.safetensors`` + ``router.json`` (the router, loadable like any checkpoint),
``optimizer.safetensors`` (every optimizer state tensor, flattened as ``state.<param index>.<name>``) and
``trainer_state.json`` (epoch, position within the epoch, global step, best metric so far, history, the optimizer's
param groups and the settings that fix the data order). Data order is a pure function of (seed, epoch), so nothing
else is needed to continue a run exactly where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sopmoe_models.routers.base import write_json

LAST = "last"
STATE = "trainer_state.json"
OPTIM = "optimizer.safetensors"


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split an optimizer's state dict into flat tensors (safetensors) and JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_last(out_dir: Path, router, opt: torch.optim.Optimizer, state: dict[str, Any], training: dict) -> Path:
    """Write the resumable checkpoint (router, optimizer, trainer state) under ``out_dir/last``, atomically per file."""
    from safetensors.torch import save_file

    last = Path(out_dir) / LAST
    router.save_router(last, training=training, metrics={"history": state.get("history", [])}, filename="router.safetensors")
    tensors, groups = optimizer_tensors(opt)
    tmp = last / (OPTIM + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(last / OPTIM)
    write_json(last / STATE, {**state, "param_groups": groups})
    return last


def load_last(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(router tensors, optimizer tensors, trainer state) of ``out_dir/last``; a clear error when absent."""
    from safetensors.torch import load_file

    last = Path(out_dir) / LAST
    needed = [last / "router.safetensors", last / OPTIM, last / STATE]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--resume: no resumable checkpoint in {last} (missing {', '.join(missing)})")
    state = json.loads((last / STATE).read_text(encoding="utf-8"))
    return load_file(str(needed[0])), load_file(str(needed[1])), state
