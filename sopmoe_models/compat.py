"""The one place sopmoe adapts to the transformers version it runs on (pyproject's ``transformers>=`` floor and up).

sopmoe calls a few of transformers' internals directly (the layer-level router runs decoder layers one by one), and
their argument names moved between releases while sopmoe supports a range of them (users' GPU machines carry what
they carry: 5.17 on the project's GPU check machine; Python 3.10 gets at most 5.20):

- the KV cache argument of a model's and a decoder layer's ``forward``: ``past_key_values`` (to 5.21), then
  ``cache`` (5.22 on; the old name warns "deprecated"). A decoder layer takes ``**kwargs``, so a wrong name would
  not fail: the cache would silently not be updated. Hence: ask the signature, once per class.
- ``masking_utils.create_causal_mask`` / ``create_sliding_window_causal_mask``: ``input_embeds`` and a required
  ``cache_position`` (to 5.0), then ``inputs_embeds`` without ``cache_position``, ``past_key_values`` then ``cache``.
- a model output's cache attribute: ``past_key_values``, then ``cache``.

Each seam reads the signature of the function it calls rather than a version number, so a backport or a release in
between takes the path that matches what is there.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

CACHE_NAMES = ("cache", "past_key_values", "past_key_value")  # newest first


@functools.cache
def _params(fn: Any) -> frozenset[str]:
    # per function, not per call: inspect.signature costs ~0.1 ms, paid per layer and decoding step otherwise
    return frozenset(inspect.signature(fn).parameters)


def _cache_name(fn: Any) -> str:
    params = _params(fn)
    return next((n for n in CACHE_NAMES if n in params), "past_key_values")


def cache_kwarg(module: nn.Module) -> str:
    """The name this transformers version's ``forward`` of ``module`` (a model or a decoder layer) takes its KV
    cache by: ``cache`` (5.22+) or ``past_key_values``."""
    return _cache_name(type(module).forward)


def output_cache(out: Any) -> Any:
    """The KV cache a model's forward returned (``out.cache`` on 5.22+, ``out.past_key_values`` before)."""
    return out.cache if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)


def causal_masks(config: Any, layer_types: list[str], inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                 cache: Any, position_ids: torch.Tensor) -> dict[str, Any]:
    """The attention masks a decoder stack's layers take, by layer type (``full_attention``, and
    ``sliding_attention`` when a layer has that type), built by ``transformers.masking_utils`` as the model's own
    forward builds them, with each function's argument names of this version."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    fns = {"full_attention": create_causal_mask}
    if "sliding_attention" in layer_types:
        fns["sliding_attention"] = create_sliding_window_causal_mask
    return {kind: fn(**_mask_kwargs(fn, config, inputs_embeds, attention_mask, cache, position_ids))
            for kind, fn in fns.items()}


def _mask_kwargs(fn, config, inputs_embeds, attention_mask, cache, position_ids) -> dict[str, Any]:
    params = _params(fn)
    kw = {"config": config, "attention_mask": attention_mask, "position_ids": position_ids, _cache_name(fn): cache,
          "inputs_embeds" if "inputs_embeds" in params else "input_embeds": inputs_embeds}
    if "cache_position" in params:
        kw["cache_position"] = cache_positions(cache, inputs_embeds.shape[1], inputs_embeds.device)
    return kw


def layer_kwargs(layer: nn.Module, cache: Any, t: int, device: torch.device) -> dict[str, Any]:
    """The cache arguments of one decoder layer's call: the cache under this version's name, and (to 5.0) the
    ``cache_position`` of the ``t`` new tokens."""
    kw = {cache_kwarg(layer): cache}
    if "cache_position" in _params(type(layer).forward):
        kw["cache_position"] = cache_positions(cache, t, device)
    return kw


def cache_positions(cache: Any, t: int, device: torch.device) -> torch.Tensor:
    """Indices of ``t`` new tokens in the cache's sequence (the cache's length on, 0 without one)."""
    start = int(cache.get_seq_length()) if cache is not None else 0
    return torch.arange(start, start + t, device=device)
