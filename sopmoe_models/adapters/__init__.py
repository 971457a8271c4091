"""Thin lm-eval adapters (one file per registered model), found through the ``lm_eval.models`` entry points."""
