"""Layer-level routing: per decoder layer a gate mixes the two experts' layer outputs on one shared residual stream.

BTX / Branch-Train-Stitch in spirit (Sukhbaatar et al. 2024; whole decoder layers as the experts): with h_0 the
mixed embedding, for each layer l = 1..L::

    g_l(t) = softmax(MLP_l([rms(h_{l-1}(t)); c(t)]))                                 (2 gates per position)
    h_l    = g_{l,f} · Layer^f_l(h_{l-1}) + g_{l,s} · Layer^s_l(h_{l-1})              (one shared stream)
    h_0    = g_{0,f} · Embed^f(x) + g_{0,s} · Embed^s(x),       g_0 from [rms(e(t)); c(t)]
    logits = g_{L+1,f} · Head^f(Norm^f(h_L)) + g_{L+1,s} · Head^s(Norm^s(h_L))

with e(t) = (Embed^f(x_t) + Embed^s(x_t)) / 2 and c(t) = the causal mean of rms(e(s)) over the real tokens s ≤ t
(``context=True``, the default). Without c(t) the gates of the embeddings and of the first layer see one token
and no context, so they cannot tell an SOP request from an arithmetic one; c(t) is a bag of the tokens so far,
costs O(H) per token and is carried in the decoding state as a running sum and count (per position of the last
forward, so that speculative decoding can roll back to any of them: :meth:`LayerLevelRouter.commit_state`). ``gates`` are (B, T, L + 2, 2) named ``embed, layer_0 .. layer_{L-1}, head``. Each expert keeps its own rotary
embedding, causal mask (``transformers.masking_utils``, through :mod:`sopmoe_models.compat`) and DynamicCache, so cached decoding is incremental per
expert. The last layer of every gate MLP starts at zero (all gates 0.5). A gate forced to (1, 0) never runs the sft
expert at all, which makes the router exactly the foundation (and vice versa).

Training needs gradients through the experts' layers with respect to the residual stream (not their weights, which
stay frozen with ``requires_grad=False``), so the experts run outside inference mode while training.
Supported: decoder stacks laid out like Llama (``model.embed_tokens / layers / norm / rotary_emb``): Llama,
Mistral, Qwen2, Qwen3. Other architectures are refused by name rather than mixed wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sopmoe_models.compat import causal_masks, layer_kwargs
from sopmoe_models.experts import ExpertMismatchError, ExpertPair, check_same_architecture
from sopmoe_models.fused import FusedOutput, crop_caches, position_ids_from_mask, time_chunks
from sopmoe_models.routers.base import Router, register_router

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _decoder(model: nn.Module) -> nn.Module:
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    return dec if hasattr(dec, "layers") else model.model  # 4.56's get_decoder() is not the decoder stack


def check_layer_compatible(pair: ExpertPair) -> None:
    """Refuse experts the layer-level router cannot mix (other architectures, other shapes)."""
    types = [getattr(m.config, "model_type", type(m).__name__) for m in pair.experts]
    if types[0] != types[1]:
        raise ExpertMismatchError(f"layer_level routing needs one architecture; got foundation {types[0]} and sft {types[1]}")
    if types[0] not in SUPPORTED:
        raise ExpertMismatchError(
            f"layer_level routing supports {', '.join(SUPPORTED)} decoders, not {types[0]}; use router_type token_level"
        )
    try:
        check_same_architecture(pair.foundation, pair.sft, strict_shapes=True)
    except ExpertMismatchError as e:
        raise ExpertMismatchError(f"layer_level routing needs identical shapes: {e}") from None
    for m in pair.experts:
        dec = _decoder(m)
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(dec, attr):
                raise ExpertMismatchError(f"{type(m).__name__} has no decoder.{attr}; layer_level cannot run it")


def _gate_mlp(d: int, hidden: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 2))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


@register_router("layer_level")
class LayerLevelRouter(Router):
    def __init__(self, pair: ExpertPair, hidden_size: int = 64, context: bool = True):
        check_layer_compatible(pair)
        super().__init__(pair, hidden_size=int(hidden_size), context=bool(context))
        self.context = bool(context)
        cfg = pair.foundation.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * self.n_layers)
        d = int(cfg.hidden_size)
        d_in = 2 * d if self.context else d
        self.gates = nn.ModuleList(_gate_mlp(d_in, hidden_size) for _ in range(self.n_layers + 2))
        self.to(pair.foundation.get_output_embeddings().weight.device)

    def gate_names(self) -> list[str]:
        return ["embed"] + [f"layer_{i}" for i in range(self.n_layers)] + ["head"]

    def _gate(self, i: int, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        w = self.gates[i][0].weight
        x = F.rms_norm(h.to(w.device, w.dtype), h.shape[-1:])
        if ctx is not None:
            x = torch.cat([x, ctx[:, -x.shape[1]:]], dim=-1)
        return self._forced(torch.softmax(self.gates[i](x), dim=-1))  # (B, T, 2)

    def _context(self, e: torch.Tensor, mask: torch.Tensor, state) -> tuple[torch.Tensor | None, tuple | None]:
        """c(t) (B, T, H): causal mean of rms(e) over real tokens, continuing the running (sum, count) of ``state``."""
        if not self.context:
            return None, None
        w = self.gates[0][0].weight
        m = mask[:, -e.shape[1]:].to(w.device, w.dtype)[..., None]  # (B, T, 1)
        x = F.rms_norm(e.to(w.device, w.dtype), e.shape[-1:]) * m
        total, count = (state[0][:, -1:], state[1][:, -1:]) if state is not None else (0.0, 0.0)
        total, count = x.cumsum(1) + total, m.cumsum(1) + count
        return total / count.clamp(min=1.0), (total, count)  # every position: commit_state may roll back to any

    @staticmethod
    def _mix(g: torch.Tensor, outs: list[torch.Tensor | None]) -> torch.Tensor:
        """Σ_e g_e · out_e over the experts that ran (a skipped expert has a forced gate of exactly 0)."""
        total = None
        for e, out in enumerate(outs):
            if out is None:
                continue
            term = g[..., e : e + 1].to(out.dtype) * out
            total = term if total is None else total + term
        return total

    def _head_logprobs(self, g: torch.Tensor, logits: list[torch.Tensor | None]) -> torch.Tensor:
        """log_softmax(g_f z_f + g_s z_s) in float32: gates (B, T, 2), logits (B, T, W) in the experts' dtype.

        With autograd (training) on whole tensors; otherwise over time chunks, so no float32 (B, T, W) temporary
        is made besides the output.
        """
        ran = [z for z in logits if z is not None]
        if torch.is_grad_enabled() and (g.requires_grad or any(z.requires_grad for z in ran)):
            return F.log_softmax(self._mix(g, [None if z is None else z.float() for z in logits]), dim=-1)
        out = torch.empty(ran[0].shape, dtype=torch.float32, device=ran[0].device)
        for sl in time_chunks(ran[0]):
            mixed = self._mix(g[:, sl], [None if z is None else z[:, sl].float() for z in logits])
            out[:, sl] = F.log_softmax(mixed, dim=-1)
        return out

    def _active(self) -> tuple[bool, bool]:
        if self.forced_gate is None:
            return (True, True)
        return tuple(w > 0 for w in self.forced_gate)

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput:
        from transformers import DynamicCache

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        active = self._active()
        experts = self.pair.experts
        decs = [_decoder(m) for m in experts]
        devs = [m.get_output_embeddings().weight.device for m in experts]  # experts may sit on two devices
        home = devs[0]  # the shared residual stream lives on the foundation's device
        ids = [input_ids.to(d) for d in devs]
        masks2d = [attention_mask.to(d) for d in devs]
        pos = [position_ids_from_mask(m, input_ids.shape[1]) for m in masks2d]
        caches, ctx_state = (list(state[0]), state[1]) if state is not None else ([None, None], None)
        if use_cache:
            caches = [c if c is not None or not a else DynamicCache(config=m.config) for c, a, m in
                      zip(caches, active, experts)]
        run = [e for e in range(2) if active[e]]
        gates = []

        embs = [decs[e].embed_tokens(ids[e]).to(home) if active[e] else None for e in range(2)]
        e_mean = sum(embs[e] for e in run) / len(run)
        ctx, ctx_state = self._context(e_mean, masks2d[0].to(home), ctx_state)
        gates.append(self._gate(0, e_mean, ctx))
        h = self._mix(gates[-1], embs)  # (B, T, H)
        rot, masks, cache_kw = [None, None], [None, None], [None, None]
        for e in run:  # before any layer runs: the cache positions are those of the cache before this forward
            he = h.to(devs[e])
            rot[e] = decs[e].rotary_emb(he, pos[e])
            masks[e] = causal_masks(experts[e].config, self.layer_types, he, masks2d[e], caches[e], pos[e])
            cache_kw[e] = layer_kwargs(decs[e].layers[0], caches[e], he.shape[1], devs[e])
        for i in range(self.n_layers):
            gates.append(self._gate(i + 1, h, ctx))
            outs = [None, None]
            for e in run:
                outs[e] = decs[e].layers[i](
                    h.to(devs[e]), attention_mask=masks[e][self.layer_types[i]], position_embeddings=rot[e],
                    position_ids=pos[e], use_cache=use_cache, **cache_kw[e],
                ).to(home)
            h = self._mix(gates[-1], outs)
        if last_only:
            h = h[:, -1:]
            gates = [g[:, -1:] for g in gates]
        gates.append(self._gate(self.n_layers + 1, h, ctx))
        logits = [None, None]
        for e in run:
            # every output row, padded ones included (the parity rule; both experts have the same rows here)
            logits[e] = experts[e].get_output_embeddings()(decs[e].norm(h.to(devs[e]))).to(home)
        logprobs = self._head_logprobs(gates[-1], logits).to(input_ids.device)
        gates = torch.stack(gates, dim=2).to(input_ids.device)  # (B, T, L + 2, 2)
        if last_only and ctx_state is not None:
            ctx_state = (ctx_state[0][:, -1:], ctx_state[1][:, -1:])
        return FusedOutput(logprobs, (tuple(caches), ctx_state) if use_cache else None, gates)

    def commit_state(self, state, keep: torch.Tensor, n_new: int):
        """Crop both experts' caches to the kept tokens; the context sums of each row's last kept token."""
        caches, ctx = state
        crop_caches(caches, n_new - int(keep.max()))
        if ctx is None:
            return caches, None
        total, count = ctx
        idx = keep.to(total.device) - 1 - n_new + total.shape[1]
        if bool((idx < 0).any()):
            raise ValueError("commit_state after a last_only forward can only keep every token")
        rows = torch.arange(total.shape[0], device=total.device)
        return caches, (total[rows, idx][:, None], count[rows, idx][:, None])
