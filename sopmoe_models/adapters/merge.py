"""lm-eval model ``sopmoe_merge``: merge foundation and sft in memory, then evaluate through plain ``HFLM``.

    lm_eval --model sopmoe_merge \\
        --model_args foundation=DIR,sft=DIR,method=ties,density=0.5 --tasks sopmoe

A merge is a single ordinary causal LM, so nothing of HFLM is overridden: the merged module and the shared
tokenizer are handed to ``HFLM.__init__`` (no folder written, no throwaway model loaded). Model args: ``foundation``,
``sft`` or ``config`` (a sopmoe YAML: models and merge sections; explicit args win), ``method``, ``weight``,
``scale``, ``density``, ``seed`` (see :mod:`sopmoe_models.merges`), ``dtype``, ``device``, ``batch_size``. The
experts load through :func:`sopmoe_models.experts.load_experts` and the merge is written into the foundation in
place, so peak memory is two models, not three. The same merge saved by ``sopmoe merge`` and evaluated with
``--model hf`` gives the same log-likelihoods (tests/test_merge_cli.py).
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.models.huggingface import HFLM

from sopmoe_models.experts import load_experts
from sopmoe_models.merges import MergeParams, merge_models

log = logging.getLogger(__name__)


def _from_config(path: str | None) -> dict[str, Any]:
    """Defaults from a sopmoe YAML (validated by the harness's loader, relative paths resolved)."""
    if not path:
        return {}
    from harness.config import load_config  # the one YAML loader; only needed when config= is given

    cfg = load_config(path)
    m = cfg.merge
    return {
        "foundation": cfg.models.foundation.path, "sft": cfg.models.sft.path,
        "dtype": cfg.models.foundation.dtype, "device": cfg.models.foundation.device,
        "method": m.method, "weight": m.weight, "scale": m.scale, "density": m.density, "seed": m.seed,
    }


class MergeLMEval(HFLM):
    """``HFLM`` over the weight-space merge of foundation and sft."""

    def __init__(
        self,
        foundation: str | None = None,
        sft: str | None = None,
        config: str | None = None,
        method: str | None = None,
        weight: float | None = None,
        scale: float | None = None,
        density: float | None = None,
        seed: int | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        **kwargs: Any,
    ) -> None:
        given = {"foundation": foundation, "sft": sft, "method": method, "weight": weight, "scale": scale,
                 "density": density, "seed": seed, "dtype": dtype, "device": device}
        args = {**MergeParams().__dict__, "dtype": "auto", "device": "auto", **_from_config(config),
                **{k: v for k, v in given.items() if v is not None}}
        if not args.get("foundation") or not args.get("sft"):
            raise ValueError("sopmoe_merge needs foundation=DIR and sft=DIR (or config=PATH) in --model_args")
        dev = args["device"]
        if isinstance(dev, str) and dev.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"sopmoe_merge: device={dev} but CUDA is not available; use device=cpu or auto")
        params = MergeParams(str(args["method"]), float(args["weight"]), float(args["scale"]),
                             float(args["density"]), int(args["seed"]))
        pair = load_experts(str(args["foundation"]), str(args["sft"]), dtype=args["dtype"], device=dev)
        merged, tokenizer = merge_models(pair, **params.__dict__, inplace=True), pair.tokenizer
        del pair  # drop the sft: only the merged module is kept
        self.merge_params = params
        log.info("sopmoe_merge: %s %s of %s and %s", params.method, params.used(), args["foundation"], args["sft"])
        super().__init__(pretrained=merged, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
