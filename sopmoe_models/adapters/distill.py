"""lm-eval model ``sopmoe_distill``: a distilled student, which is a plain Hugging Face folder.

    lm_eval --model sopmoe_distill --model_args pretrained=models/checkpoints/distill/best_student --tasks sopmoe

Nothing of ``HFLM`` is overridden: the student runs at 1x cost exactly as ``--model hf`` runs it (same numbers; test
in tests/test_distill_adapter.py). This class only checks that the folder exists, accepts ``student=`` as an alias
of ``pretrained=``, and logs the ``distill.json`` provenance (teacher, student init, best epoch) written by
``sopmoe distill``; ``self.distill_card`` holds it for callers that want it in their results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lm_eval.models.huggingface import HFLM

from sopmoe_models.adapters.parallel import DataParallel
from sopmoe_models.cards import DistillCard

log = logging.getLogger(__name__)


def read_card(folder: str | Path) -> DistillCard | None:
    """The ``distill.json`` of a student folder, or None when the folder has none (any HF model evaluates too)."""
    return DistillCard.in_folder(folder)


class DistillLMEval(DataParallel, HFLM):
    """``HFLM`` on a student folder, with its distillation provenance logged. HFLM loads it by name, so under
    ``accelerate launch`` it shards the requests itself on GPUs; :class:`DataParallel` adds the CPU (gloo) case,
    where HFLM sets up the processes but leaves each scoring every request."""

    def __init__(self, pretrained: str | None = None, student: str | None = None, **kwargs: Any) -> None:
        remote = kwargs.pop("trust_remote_code", False)
        if remote not in (None, False) and str(remote).strip().lower() not in ("false", "0", "none", ""):
            raise ValueError("sopmoe_distill never enables trust_remote_code (a student is a plain HF folder); "
                             "use --model hf with trust_remote_code=True if you mean to run the folder's code")
        path = pretrained or student
        if not path:
            raise ValueError("sopmoe_distill needs pretrained=DIR (a best_student folder written by `sopmoe distill`)")
        if isinstance(path, str):
            folder = Path(path).expanduser()
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"sopmoe_distill: {folder} is not a model folder (no config.json); "
                    "pass pretrained=<output_dir>/best_student of a finished `sopmoe distill` run"
                )
            self.distill_card = read_card(folder)
            c = self.distill_card
            if c is not None:
                best = c.best
                log.info("sopmoe_distill: student of a %s teacher, init %s (%s), best epoch %s (%s %.4f)",
                         c.teacher_type(), c.student_init, c.finetuning, best.get("epoch"),
                         best.get("metric"), best.get("score", float("nan")))
            else:
                log.warning("sopmoe_distill: %s has no distill.json; evaluating it as a plain HF model", folder)
            path = str(folder)
        else:
            self.distill_card = None
        super().__init__(pretrained=path, **kwargs)
        self.join_launched_processes()
