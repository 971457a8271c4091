"""lm-eval model ``sopmoe_merge``: merge foundation and sft in memory, then evaluate through plain ``HFLM``.

    lm_eval --model sopmoe_merge \\
        --model_args foundation=DIR,sft=DIR,method=ties,density=0.5 --tasks sopmoe
    lm_eval --model sopmoe_merge --model_args config=configs/config.yaml,method=dare,seed=1 --tasks sopmoe

A merge is one ordinary causal LM, so nothing of HFLM is overridden: the merged module and the shared tokenizer are
handed to ``HFLM.__init__`` (no folder written, no throwaway model loaded). Model args are those of the other sopmoe
adapters (``config``, ``foundation``, ``sft``, ``device``, ``dtype``, ``sft_device``, ``sft_dtype``, HFLM's
``batch_size``/``max_length``/...) plus the ``merge`` section: ``method``, ``weight``, ``scale``, ``density``,
``seed`` (:mod:`sopmoe_models.merges`); explicit args override the YAML. The experts load through
:func:`sopmoe_models.factory.build_merge` and the merge is written into the foundation in place, so
peak memory is two models, not three. The same merge saved by ``sopmoe merge`` and evaluated with ``--model hf``
gives the same log-likelihoods (tests/test_merge_cli.py).
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.models.huggingface import HFLM

from sopmoe_models.adapters.base import HFLM_ARGS, quiet_preloaded_warnings, resolve_model_args
from sopmoe_models.adapters.parallel import DataParallel
from sopmoe_models.factory import build_merge

log = logging.getLogger(__name__)

MODEL_ARGS = {"method": "merge.method", "weight": "merge.weight", "scale": "merge.scale",
              "density": "merge.density", "seed": "merge.seed"}


def resolve_config(config: str | None, model_args: dict[str, Any]):
    """The YAML named by ``config`` with explicit ``model_args`` applied on top, by the rules of every sopmoe adapter
    (:func:`sopmoe_models.adapters.base.resolve_model_args`: only an explicit ``config=``; a device this machine
    lacks falls back to the config's)."""
    return resolve_model_args("sopmoe_merge", config, model_args, MODEL_ARGS)[0]


class MergeLMEval(DataParallel, HFLM):
    """``HFLM`` over the weight-space merge of foundation and sft; data parallel under ``accelerate launch``
    (:mod:`sopmoe_models.adapters.parallel`: HFLM would not split the requests of a model handed to it)."""

    def __init__(self, config: str | None = None, batch_size: int | str = 1, max_batch_size: int = 64,
                 **model_args: Any) -> None:
        hf_kwargs = {k: model_args.pop(k) for k in HFLM_ARGS if k in model_args}
        cfg = resolve_config(config, model_args)
        if not cfg.models.foundation.path or not cfg.models.sft.path:
            raise ValueError("sopmoe_merge needs foundation=DIR and sft=DIR (or config=PATH) in --model_args")
        g = cfg.merge
        merged, tokenizer, self.merge_params = build_merge(cfg, inplace=True)  # the sft is dropped on return
        log.info("sopmoe_merge: %s %s of %s and %s", g.method, self.merge_params.used(),
                 cfg.models.foundation.path, cfg.models.sft.path)
        with quiet_preloaded_warnings():
            super().__init__(pretrained=merged, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                             max_batch_size=max_batch_size, **hf_kwargs)
        self.join_launched_processes()

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "merge": {"method": self.merge_params.method,
                                                      **self.merge_params.used()}}
