"""lm-eval model ``sopmoe_merge``: merge foundation and sft in memory, then evaluate through plain ``HFLM``.

    lm_eval --model sopmoe_merge \\
        --model_args foundation=DIR,sft=DIR,method=ties,density=0.5 --tasks sopmoe
    lm_eval --model sopmoe_merge --model_args config=configs/config.yaml,method=dare,seed=1 --tasks sopmoe

A merge is one ordinary causal LM, so nothing of HFLM is overridden: the merged module and the shared tokenizer are
handed to ``HFLM.__init__`` (no folder written, no throwaway model loaded). Model args are those of the other sopmoe
adapters (``config``, ``foundation``, ``sft``, ``device``, ``dtype``, ``sft_device``, ``sft_dtype``, HFLM's
``batch_size``/``max_length``/...) plus the ``merge`` section: ``method``, ``weight``, ``scale``, ``density``,
``seed`` (:mod:`sopmoe_models.merges`); explicit args override the YAML. The experts load through
:func:`sopmoe_models.experts.load_experts_from_config` and the merge is written into the foundation in place, so
peak memory is two models, not three. The same merge saved by ``sopmoe merge`` and evaluated with ``--model hf``
gives the same log-likelihoods (tests/test_merge_cli.py).
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.models.huggingface import HFLM

from sopmoe_models.adapters.base import (
    COMMON_ARGS,
    HFLM_ARGS,
    TASK_ARGS,
    FusedHFLM,
    _quiet_preloaded_warnings,
)
from sopmoe_models.experts import load_experts_from_config
from sopmoe_models.merges import MergeParams, merge_models

log = logging.getLogger(__name__)

MODEL_ARGS = {"method": "merge.method", "weight": "merge.weight", "scale": "merge.scale",
              "density": "merge.density", "seed": "merge.seed"}


def resolve_config(config: str | None, model_args: dict[str, Any]):
    """The YAML named by ``config`` (as the other adapters read it) with explicit ``model_args`` applied on top.

    Only an explicit ``config=`` is read (never ``configs/config.yaml`` of the working directory); devices follow
    the fused adapters' rules (a device this machine lacks, e.g. lm-eval's CLI default ``cuda:0`` on a CPU machine,
    falls back to the config's, as HFLM falls back to CPU).
    """
    from sopmoe_models.config import load_config  # lazy: pydantic + yaml only when a config is read

    model_args = FusedHFLM._placement_args(config, dict(model_args))
    overrides: dict[str, Any] = {}
    for key, value in model_args.items():
        if key in TASK_ARGS:
            continue
        if key in COMMON_ARGS:
            for dotted in COMMON_ARGS[key]:
                overrides[dotted] = str(value) if value is not None else None
        elif key in MODEL_ARGS:
            overrides[MODEL_ARGS[key]] = value
        else:
            accepted = ["config", *COMMON_ARGS, *MODEL_ARGS, *HFLM_ARGS, "batch_size", "max_batch_size"]
            raise ValueError(f"sopmoe_merge: unknown model argument {key!r}; accepted: {', '.join(accepted)}")
    return load_config(config, overrides, use_default=False)


class MergeLMEval(HFLM):
    """``HFLM`` over the weight-space merge of foundation and sft."""

    def __init__(self, config: str | None = None, batch_size: int | str = 1, max_batch_size: int = 64,
                 **model_args: Any) -> None:
        hf_kwargs = {k: model_args.pop(k) for k in HFLM_ARGS if k in model_args}
        cfg = resolve_config(config, model_args)
        if not cfg.models.foundation.path or not cfg.models.sft.path:
            raise ValueError("sopmoe_merge needs foundation=DIR and sft=DIR (or config=PATH) in --model_args")
        g = cfg.merge
        self.merge_params = MergeParams(g.method, g.weight, g.scale, g.density, g.seed)
        pair = load_experts_from_config(cfg)
        merged, tokenizer = merge_models(pair, **self.merge_params.__dict__, inplace=True), pair.tokenizer
        del pair  # drop the sft: only the merged module is kept
        log.info("sopmoe_merge: %s %s of %s and %s", g.method, self.merge_params.used(),
                 cfg.models.foundation.path, cfg.models.sft.path)
        with _quiet_preloaded_warnings():
            super().__init__(pretrained=merged, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                             max_batch_size=max_batch_size, **hf_kwargs)

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "merge": {"method": self.merge_params.method,
                                                      **self.merge_params.used()}}
