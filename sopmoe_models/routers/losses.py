"""Router training losses, as pure functions of gates, log-probabilities and a token mask.

Notation: a batch has B sequences of T positions; position t predicts token y_{t+1}. ``mask`` (B, T) is 1 where
that next token is an *output* token (prompt and padding are 0), so every loss is averaged over output tokens only
(M = the set of masked-in positions, |M| their count). Gates ``g`` are (B, T, E) or, for a router with one gate per
layer, (B, T, L, E), with E = 2 experts in the order (foundation, sft) and Σ_e g_{t,e} = 1.

Total loss (DESIGN §4)::

    loss = mixture_nll + load_balance_weight · load_balance + sparsity_weight · gate_entropy

- :func:`mixture_nll` — NLL of the gated mixture (Co-LLM / BTM style):
  ``−(1/|M|) Σ_{t∈M} log Σ_e g_{t,e} · p_e(y_{t+1} | y_≤t)``, computed stably as a logsumexp of
  ``log g_{t,e} + log p_e``. :func:`token_nll` is the same for an already-mixed distribution.
- :func:`load_balance` — Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4):
  ``E · Σ_e f_e · P_e`` with ``f_e = (1/|M|) Σ_{t∈M} 1[argmax_e' g_{t,e'} = e]`` (the fraction of tokens routed to
  e) and ``P_e = (1/|M|) Σ_{t∈M} g_{t,e}`` (the mean gate of e). It is 1 when routing is balanced and E when every
  token goes to one expert with gate 1; only ``P_e`` carries gradient. Per-layer gates: the mean over layers.
- :func:`gate_entropy` — ``(1/|M|) Σ_{t∈M} −Σ_e g_{t,e} log g_{t,e}`` (mean over layers for per-layer gates);
  minimising it makes routing sparse (near one-hot); its range is [0, log E].
"""

from __future__ import annotations

import torch


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets (B, T-1) with ignored positions set to 0 (a valid index; the mask removes them)."""
    return labels[:, 1:].clamp(min=0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, T, ...) over masked-in positions (mask (B, T)); trailing dims are averaged too."""
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.expand_as(values).to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def mixture_nll(expert_target_logprobs: torch.Tensor, gates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−mean_{t∈M} log Σ_e g_{t,e} p_e(y_{t+1}); inputs (B, T, E), (B, T, E), (B, T)."""
    logmix = torch.logsumexp(torch.log(gates.clamp(min=0)) + expert_target_logprobs, dim=-1)  # (B, T)
    return -_masked_mean(logmix, mask)


def token_nll(target_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−mean_{t∈M} log p(y_{t+1}) for an already-mixed distribution; inputs (B, T), (B, T)."""
    return -_masked_mean(target_logprobs, mask)


def load_balance(gates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Switch-style balance E · Σ_e f_e · P_e over output tokens; gates (B, T, E) or (B, T, L, E)."""
    n_experts = gates.shape[-1]
    g = gates if gates.dim() == 4 else gates.unsqueeze(2)  # (B, T, L, E)
    m = mask.to(g.dtype)[:, :, None, None]  # (B, T, 1, 1)
    count = mask.sum().clamp(min=1.0)
    routed = torch.nn.functional.one_hot(g.argmax(-1), n_experts).to(g.dtype)  # (B, T, L, E), no gradient
    f = (routed * m).sum(dim=(0, 1)) / count  # (L, E)
    p = (g * m).sum(dim=(0, 1)) / count  # (L, E)
    return (n_experts * (f * p).sum(-1)).mean()


def gate_entropy(gates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over output tokens (and layers) of −Σ_e g_e log g_e; gates (B, T, E) or (B, T, L, E)."""
    ent = -(gates * torch.log(gates.clamp(min=1e-12))).sum(-1)  # (B, T) or (B, T, L)
    return _masked_mean(ent, mask)


def gate_means(gates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean gate per expert over output tokens: (E,) for (B, T, E) gates, (L, E) for per-layer gates."""
    m = mask.to(gates.dtype)
    while m.dim() < gates.dim():
        m = m.unsqueeze(-1)
    return (gates * m).sum(dim=(0, 1)) / mask.sum().clamp(min=1.0)


def router_loss(
    target_logprobs: torch.Tensor,
    gates: torch.Tensor,
    mask: torch.Tensor,
    *,
    load_balance_weight: float = 0.0,
    sparsity_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The total loss and its parts. ``target_logprobs`` (B, T) is log p_mix(y_{t+1}) of the router's mixture."""
    nll = token_nll(target_logprobs, mask)
    balance = load_balance(gates, mask)
    entropy = gate_entropy(gates, mask)
    loss = nll + load_balance_weight * balance + sparsity_weight * entropy
    return {"loss": loss, "nll": nll, "balance": balance, "entropy": entropy}
