"""sopmoe models: fused foundation/SFT language models and their lm-eval adapters.

Kept import-light on purpose: the lm-eval hook (``sopmoe_lm_eval.pth``) imports this package in every Python
process, so nothing heavy (torch, transformers) may be imported here.
"""

__version__ = "0.1.0"
