"""The plumbing both trainers share (router: ``router_trainer``/``router_state``; distillation:
``distill_trainer``/``distill_checkpoint``), written once.

- :func:`lr_factor`: the learning-rate schedule (linear warm-up, then linear decay to 0);
- :func:`optimizer_tensors` / :func:`restore_optimizer`: an optimizer's state as flat tensors for safetensors
  (``state.<param index>.<name>``), never a pickle, and back;
- :func:`read_state`: a trainer state JSON, checked for the keys a resume needs;
- :class:`TrainingDiverged`: the loss became NaN/inf (the divergence guard of both loops);
- atomic writes: :func:`write_json`, :func:`write_atomic`, :func:`atomic_path` from :mod:`sopmoe_models.outputs`;
- :func:`output_mask`: which positions predict an output token (from :mod:`sopmoe_models.data`, where the label
  convention lives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sopmoe_models.data import output_mask
from sopmoe_models.errors import UserError
from sopmoe_models.outputs import atomic_path, read_json, write_atomic, write_json

__all__ = ["TrainingDiverged", "atomic_path", "lr_factor", "optimizer_tensors", "output_mask", "read_state",
           "restore_optimizer", "write_atomic", "write_json"]


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the step was not applied and the last good checkpoint is kept. The message says
    where and what to do (lower the learning rate and rerun, or resume)."""


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (from 0) of ``total``: linear warm-up over
    ``warmup`` steps ((step+1)/warmup), then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer's state dict split into flat CPU tensors (``state.<param index>.<name>``, for safetensors) and
    its JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      groups: list[dict[str, Any]] | None = None) -> None:
    """Load what :func:`optimizer_tensors` split off back into ``opt``; ``groups=None`` keeps ``opt``'s own param
    groups (hyperparameters as constructed)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"] if groups is None else groups})


def read_state(path: Path, keys: tuple[str, ...], kind: str) -> dict[str, Any]:
    """A trainer state JSON (``kind`` names it in errors) that has every one of ``keys``; a damaged or foreign one is
    one line naming the file."""
    state = read_json(path, "; the checkpoint is damaged: start again with --overwrite")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise UserError(f"{path}: not a {kind} (needs {', '.join(keys)}); start again with --overwrite")
    return state
