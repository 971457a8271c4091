"""Resumable training state for the router trainer, without pickles (DESIGN §6, STYLE "checkpoints").

``<output_dir>/last/`` holds ``router.safetensors`` + ``router.json`` (the router, loadable like any checkpoint),
``optimizer.safetensors`` (every optimizer state tensor, flattened as ``state.<param index>.<name>``) and
``trainer_state.json`` (epoch, position within the epoch, global step, best metric so far, history, the optimizer's
param groups, the settings that fix the data order, the training data's identity, and the sha256 of the three other
files). Data order is a pure function of (seed, epoch), so nothing else is needed to continue a run exactly where it
stopped.

The folder is written whole: everything goes into a hidden temporary sibling that is renamed to ``last`` once
complete (:func:`sopmoe_models.outputs.replace_dir`), so a kill leaves either the previous ``last/`` or the new one,
never router, optimizer and state from different steps; :func:`load_last` checks every file against the state's
sha256 before a run resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sopmoe_models.errors import UserError
from sopmoe_models.outputs import file_sha256, leftovers, new_temp_dir, replace_dir
from training.toolkit import optimizer_tensors, read_state, write_json

LAST = "last"
STATE = "trainer_state.json"
OPTIM = "optimizer.safetensors"
ROUTER = "router.safetensors"
CHECKED = (ROUTER, "router.json", OPTIM)
STATE_KEYS = ("epoch", "group", "global_step", "history", "trajectory", "param_groups")  # what a resume needs


def save_last(out_dir: Path, router, opt: torch.optim.Optimizer, state: dict[str, Any], training: dict) -> Path:
    """Write the resumable checkpoint (router, optimizer, trainer state) as one folder ``out_dir/last``: written in a
    temporary sibling, then renamed into place."""
    from safetensors.torch import save_file

    last = Path(out_dir) / LAST
    tmp = new_temp_dir(last)
    router.save_router(tmp, training=training, metrics={"history": state.get("history", [])}, filename=ROUTER)
    tensors, groups = optimizer_tensors(opt)
    save_file(tensors, str(tmp / OPTIM), metadata={"global_step": str(state.get("global_step"))})
    files = {name: file_sha256(tmp / name) for name in CHECKED}
    write_json(tmp / STATE, {**state, "param_groups": groups, "files": files})
    return replace_dir(tmp, last)


def load_last(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(router tensors, optimizer tensors, trainer state) of ``out_dir/last``, every file checked against the
    state's sha256; a clear error (naming the file) when it is absent, unreadable or torn."""
    from safetensors.torch import load_file

    last = Path(out_dir) / LAST
    if not last.is_dir():  # killed between the two renames of replace_dir: put the previous checkpoint back
        aside = [p for p in leftovers(out_dir, LAST, "old") if (p / STATE).is_file()]
        if aside:
            aside[-1].rename(last)
    needed = [last / ROUTER, last / OPTIM, last / STATE]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--resume: no resumable checkpoint in {last} (missing {', '.join(missing)}); "
                                "start without --resume (with --overwrite if the folder holds a trained router)")
    state = read_state(last / STATE, STATE_KEYS, "router trainer state")
    files = state.get("files")
    if isinstance(files, dict):  # written whole (sopmoe >= the atomic last/): every file must be the one recorded
        torn = [name for name in CHECKED if not (last / name).is_file() or file_sha256(last / name) != files.get(name)]
        if torn:
            raise UserError(f"--resume: {last} is torn or damaged ({', '.join(torn)} differ from {STATE}); "
                            "start again with --overwrite")
    try:
        return load_file(str(needed[0])), load_file(str(needed[1])), state
    except Exception as e:  # SafetensorError on a truncated file
        raise UserError(f"--resume: {last} holds an unreadable safetensors file ({e}); start again with --overwrite"
                        ) from None
