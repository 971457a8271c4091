"""Token-level routing: a small MLP reads both experts' final hidden states and gates their distributions per token.

Co-LLM style (Shen et al. 2024, "Learning to Decode Collaboratively with Multiple Language Models"), with a soft
gate over two frozen experts instead of a defer/no-defer decision::

    g_t = softmax(W_2 · GELU(W_1 · [rms(h^f_t); rms(h^s_t)] + b_1) + b_2)          (2 gates per position)
    log p(y_{t+1} | x_≤t) = log Σ_e g_{t,e} · p_e(y_{t+1} | x_≤t)                  (a per-token mixture)

trained by the mixture's NLL on output tokens (:mod:`sopmoe_models.routers.losses`). ``rms`` is a parameter-free
RMS normalisation, so the features have unit scale whatever the experts' hidden-state scale. W_2 starts at zero:
an untrained router is the 0.5/0.5 probability ensemble. Training never builds the (B, T, W) mixture: the experts
run once under ``torch.inference_mode()`` and only each expert's log-prob of the target token is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sopmoe_models.experts import ExpertPair
from sopmoe_models.fused import FusedOutput, expert_logits, target_logprobs
from sopmoe_models.routers.base import Router, mix_two_logits, register_router


def _hidden_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[1])


@register_router("token_level")
class TokenLevelRouter(Router):
    def __init__(self, pair: ExpertPair, hidden_size: int = 64):
        super().__init__(pair, hidden_size=int(hidden_size))
        d_in = _hidden_size(pair.foundation) + _hidden_size(pair.sft)
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden_size), nn.GELU(), nn.Linear(hidden_size, 2))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.to(pair.foundation.get_output_embeddings().weight.device)

    def gates_from_hidden(self, h_f: torch.Tensor, h_s: torch.Tensor) -> torch.Tensor:
        """(B, T, H_f), (B, T, H_s) -> gates (B, T, 2) over (foundation, sft)."""
        dev, dt = self.mlp[0].weight.device, self.mlp[0].weight.dtype
        feats = torch.cat([F.rms_norm(h.to(dev, dt), h.shape[-1:]) for h in (h_f, h_s)], dim=-1)
        return self._forced(torch.softmax(self.mlp(feats), dim=-1))

    def _experts(self, input_ids, attention_mask, caches, use_cache, last_only):
        """Per expert: logits (B, T', V), new cache, final hidden state (B, T', H); T' = 1 when ``last_only``."""
        outs = []
        for model, cache in zip(self.pair.experts, caches):
            z, c, hs = expert_logits(
                model, input_ids, attention_mask, self.width,
                cache=cache, use_cache=use_cache, last_only=last_only, output_hidden_states=True,
            )
            h = hs[-1][:, -1:] if last_only else hs[-1]
            outs.append((z, c, h.to(input_ids.device)))
        return outs

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        caches = state if state is not None else (None, None)
        with torch.inference_mode():
            (z_f, c_f, h_f), (z_s, c_s, h_s) = self._experts(input_ids, attention_mask, caches, use_cache, last_only)
        if torch.is_grad_enabled():  # autograd through the router (never the experts) needs normal tensors
            h_f, h_s = h_f.clone(), h_s.clone()
        gates = self.gates_from_hidden(h_f, h_s)  # (B, T, 2)
        with torch.inference_mode(not gates.requires_grad):
            # each expert log-softmaxed over all its rows, mixed chunk by chunk into z_f's memory when it is float32
            mix = mix_two_logits(gates, z_f, z_s, overwrite=True)
        return FusedOutput(mix, (c_f, c_s) if use_cache else None, gates)

    def target_logprobs(self, input_ids, attention_mask, targets):
        with torch.inference_mode():
            (z_f, _, h_f), (z_s, _, h_s) = self._experts(input_ids, attention_mask, (None, None), False, False)
            # log p_e(y) = z_e[y] - logsumexp(z_e) over time chunks: no (B, T, W) log-softmax is materialised.
            tgt = torch.stack([target_logprobs(z[:, :-1], targets) for z in (z_f, z_s)], -1)
            h_f, h_s = h_f[:, :-1], h_s[:, :-1]
        tgt, h_f, h_s = tgt.clone(), h_f.clone(), h_s.clone()  # (B, T-1, 2), (B, T-1, H) out of inference mode
        gates = self.gates_from_hidden(h_f, h_s)
        return torch.logsumexp(torch.log(gates) + tgt, dim=-1), gates
