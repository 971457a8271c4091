"""The transformers-version seam (sopmoe_models/compat.py): each call takes the argument names of the function it
calls, whichever release spells them how. The real paths run in CI at the newest transformers and at the floor
(``make test-floor``); these tests pin the choice itself on stand-in signatures of each release's spelling."""

from __future__ import annotations

import torch
from torch import nn

from sopmoe_models import compat


class _Cache:
    def __init__(self, n: int):
        self.n = n

    def get_seq_length(self) -> int:
        return self.n


def test_cache_kwarg_follows_the_forward_signature():
    class New(nn.Module):
        def forward(self, hidden_states, cache=None, use_cache=False, **kwargs): ...

    class Old(nn.Module):
        def forward(self, hidden_states, past_key_values=None, use_cache=False, **kwargs): ...

    assert compat.cache_kwarg(New()) == "cache"
    assert compat.cache_kwarg(Old()) == "past_key_values"


def test_mask_kwargs_of_each_spelling():
    emb, mask, pos = torch.zeros(2, 3, 4), torch.ones(2, 5), torch.arange(2, 5).expand(2, -1)

    def v5_22(config, inputs_embeds, attention_mask, cache, position_ids=None): ...

    def v5_10(config, inputs_embeds, attention_mask, past_key_values, position_ids=None): ...

    def v4_56(config, input_embeds, attention_mask, cache_position, past_key_values, position_ids=None): ...

    cache = _Cache(2)
    assert set(compat._mask_kwargs(v5_22, "cfg", emb, mask, cache, pos)) == {
        "config", "inputs_embeds", "attention_mask", "cache", "position_ids"}
    assert set(compat._mask_kwargs(v5_10, "cfg", emb, mask, cache, pos)) == {
        "config", "inputs_embeds", "attention_mask", "past_key_values", "position_ids"}
    old = compat._mask_kwargs(v4_56, "cfg", emb, mask, cache, pos)
    assert set(old) == {"config", "input_embeds", "attention_mask", "past_key_values", "position_ids", "cache_position"}
    assert old["cache_position"].tolist() == [2, 3, 4]  # the 3 new tokens after the cache's 2
    assert compat._mask_kwargs(v4_56, "cfg", emb, mask, None, pos)["cache_position"].tolist() == [0, 1, 2]


def test_layer_kwargs_add_cache_position_only_where_taken():
    class Layer4(nn.Module):
        def forward(self, hidden_states, past_key_values=None, cache_position=None, **kwargs): ...

    class Layer5(nn.Module):
        def forward(self, hidden_states, cache=None, **kwargs): ...

    cache = _Cache(7)
    kw = compat.layer_kwargs(Layer4(), cache, 2, torch.device("cpu"))
    assert kw["past_key_values"] is cache and kw["cache_position"].tolist() == [7, 8]
    assert compat.layer_kwargs(Layer5(), cache, 2, torch.device("cpu")) == {"cache": cache}
