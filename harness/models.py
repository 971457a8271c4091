"""Build a fused model by the name a command line uses: ``foundation`` | ``sft`` | ``ensemble`` | ``btm``.

The builders live in the one model factory, :mod:`sopmoe_models.factory` (which also decides every default, e.g.
the router checkpoint of ``btm``); this module is the CLI's name for it. ``foundation`` and ``sft`` are the
ensemble at weights (1, 0) and (0, 1): the other expert is never run, and the result equals the expert's own HF
``generate`` token for token (tests/test_generation.py), so every model in a comparison decodes with exactly the
same loop, stop strings and EOS handling. A new kind is one more builder::

    @register("mine")
    def _mine(cfg, pair, **options):
        return MyFusedLM(pair)
"""

from __future__ import annotations

from sopmoe_models.factory import BUILDERS, Builder, build_drafter, build_fused_model, model_names, register

__all__ = ["BUILDERS", "Builder", "build_drafter", "build_fused_model", "model_names", "register"]
