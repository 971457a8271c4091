"""``sopmoe_ensemble``: the weighted ensemble of foundation and sft as an lm-eval model (DESIGN §4–5).

    lm_eval --model sopmoe_ensemble \\
        --model_args foundation=DIR,sft=DIR,foundation_weight=0.5,sft_weight=0.5,mix=prob --tasks sopmoe
    lm_eval --model sopmoe_ensemble --model_args config=configs/config.yaml --tasks sopmoe

``mix=prob`` scores with log(w_f p_f + w_s p_s), ``mix=logit`` with log_softmax(w_f z_f + w_s z_s)
(:mod:`sopmoe_models.ensemble`). Weights (1, 0) give exactly ``--model hf`` on the foundation, (0, 1) on the sft, on
every checkpoint: each expert is normalised over all its output rows, padded ones included (the parity rule,
:mod:`sopmoe_models.experts`). ``draft=DIR|auto`` (with ``num_draft_tokens=``, ``draft_schedule=``) generates
speculatively with that drafter, e.g. the distilled student, and ``draft=lookup`` (with ``draft_corpus=FILE``) with
drafts copied from the prompt and the corpus: the same greedy output, fewer ensemble forwards (``FusedHFLM``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from sopmoe_models.adapters.base import FusedHFLM
from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import ExpertPair
from sopmoe_models.factory import build_ensemble


class EnsembleLMEval(FusedHFLM):
    MODEL_ARGS: ClassVar[dict[str, str | None]] = {
        "foundation_weight": "ensemble.foundation_weight",
        "sft_weight": "ensemble.sft_weight",
        "mix": "ensemble.mix",
    }

    @classmethod
    def build_fused(cls, cfg, options: dict[str, Any], pair: ExpertPair | None) -> EnsembleLM:
        return build_ensemble(cfg, pair)

    def describe(self) -> dict[str, Any]:
        w_f, w_s = self.fused.weights
        return {"foundation_weight": w_f, "sft_weight": w_s, "mix": self.fused.mix}
