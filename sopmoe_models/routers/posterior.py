"""Training-free posterior routing: Branch-Train-Merge ensembling (Li et al. 2022, "Branch-Train-Merge", §3.2).

At each position t the weight of expert e is its posterior given the tokens seen so far (prompt included)::

    g_{t,e} = π_e · Π_{s≤t} p_e(x_s | x_<s)^{1/τ}  /  Σ_e' (same for e')       (Bayes' rule; τ = 1 is exact)

and the next-token distribution is the mixture Σ_e g_{t,e} p_e(· | x_≤t). The first real token has no likelihood, so
its gate is the prior π (so is the first token's after left padding). Padding contributes nothing. ``state`` carries
each expert's KV cache, the running log-likelihoods Σ_s log p_e(x_s | x_<s) (B, T', 2) and each expert's log-probs
(B, T', W) over all its output rows (the parity rule) at the positions of the last forward (T' = 1 after a
``last_only`` call), so cached decoding adds one token's likelihood per step instead of re-scoring the prefix, and
:meth:`PosteriorRouter.commit_state` can roll back to any of those positions (speculative decoding: the running
likelihood must not count rejected draft tokens). A cached forward without ``last_only`` therefore keeps two float32
(B, T, W) tensors: feed long prompts with ``last_only=True`` (as generation does).

The prior π is uniform unless estimated (:func:`estimate_prior`): the maximum-likelihood mixture weights of the
two experts on dev data, found by EM on the per-sequence log-likelihoods (π ← mean over sequences of the
sequence-level posterior; Li et al. estimate the prior from the posteriors on held-out data the same way).
"""

from __future__ import annotations

import math

import torch

from sopmoe_models.experts import ExpertPair
from sopmoe_models.fused import FusedOutput, crop_caches, expert_logits, log_softmax_, target_logprobs
from sopmoe_models.routers.base import Router, mix_two_logits, register_router


@register_router("posterior")
class PosteriorRouter(Router):
    trainable = False

    def __init__(self, pair: ExpertPair, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"posterior temperature must be > 0, got {temperature!r}")
        super().__init__(pair, temperature=float(temperature))
        self.temperature = float(temperature)
        self.register_buffer("log_prior", torch.full((2,), -math.log(2.0)))  # (2,) log π, uniform by default

    def set_prior(self, prior: torch.Tensor | list[float]) -> None:
        p = torch.as_tensor(prior, dtype=torch.float32)
        if p.shape != (2,) or bool((p <= 0).any()):
            raise ValueError(f"a prior is two positive weights, got {prior!r}")
        self.log_prior.copy_(torch.log(p / p.sum()))

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False) -> FusedOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        b, t = input_ids.shape
        caches, cum, last_lp = state if state is not None else ((None, None), None, None)
        if cum is not None:  # the state's last position: (B, T', 2) -> (B, 2), (B, T', W) -> (B, W)
            cum, last_lp = cum[:, -1], tuple(lp[:, -1] for lp in last_lp)
        zs, new_caches = [], []
        with torch.inference_mode():
            for model, cache in zip(self.pair.experts, caches):
                # Every position's distribution is needed: each new token's likelihood comes from the one before.
                z, c, _ = expert_logits(model, input_ids, attention_mask, self.width, cache=cache, use_cache=use_cache)
                zs.append(z)  # (B, T, W) logits over all the expert's rows, its dtype
                new_caches.append(c)
            # log p_e(x_s | x_<s) of each new token s: position s-1 predicts it; the first uses the previous step.
            tok = input_ids.to(zs[0].device)
            ll = torch.zeros(b, t, 2, device=tok.device)
            for e, z in enumerate(zs):
                if t > 1:
                    ll[:, 1:, e] = target_logprobs(z[:, :-1], tok[:, 1:])
                if last_lp is not None:
                    ll[:, 0, e] = last_lp[e].gather(-1, tok[:, :1]).squeeze(-1)
            # A token counts when it is real and some real token precedes it (padding adds nothing; neither do the
            # holes that rejected draft tokens leave in a speculative decode's mask).
            m = attention_mask.to(ll.device, ll.dtype)
            valid = m[:, -t:] * ((m.cumsum(-1) - m)[:, -t:] > 0)
            run = (ll * valid[:, :, None]).cumsum(dim=1) + (cum[:, None] if cum is not None else 0.0)  # (B, T, 2)
            gates = self._forced(torch.softmax(self.log_prior.to(run.device) + run / self.temperature, dim=-1))
            if last_only:
                run, gates, zs = run[:, -1:], gates[:, -1:], [z[:, -1:] for z in zs]
            new_state = None
            if use_cache:  # each stored position's log-probs (B, T', W) over every row score the token after it
                new_state = (tuple(new_caches), run, tuple(log_softmax_(z, overwrite=False) for z in zs))
            mix = mix_two_logits(gates, zs[0], zs[1], overwrite=True)  # (B, T, W)
        return FusedOutput(mix, new_state, gates)

    def commit_state(self, state, keep: torch.Tensor, n_new: int):
        """Crop the caches to the kept tokens; running likelihoods and last log-probs of each row's last kept token."""
        caches, run, lps = state
        idx = keep.to(run.device) - 1 - n_new + run.shape[1]  # index among the stored positions (B,)
        if bool((idx < 0).any()):
            raise ValueError("commit_state after a last_only forward can only keep every token")
        rows = torch.arange(run.shape[0], device=run.device)
        return (crop_caches(caches, n_new - int(keep.max())), run[rows, idx][:, None],
                tuple(lp[rows, idx][:, None] for lp in lps))

    @torch.inference_mode()
    def sequence_loglik(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Σ_s log p_e(x_s | x_<s) over each whole sequence, prompt included: (B, 2)."""
        rows = []
        for model in self.pair.experts:
            z, _, _ = expert_logits(model, input_ids, attention_mask, self.width)
            lp = target_logprobs(z[:, :-1], input_ids[:, 1:].to(z.device))
            rows.append((lp * attention_mask[:, 1:].to(lp.device) * attention_mask[:, :-1].to(lp.device)).sum(-1))
        return torch.stack(rows, dim=-1)


def estimate_prior(seq_loglik: torch.Tensor, temperature: float = 1.0, iters: int = 200) -> torch.Tensor:
    """Maximum-likelihood mixture weights π for sequence log-likelihoods (N, 2) by EM; returns π (2,).

    E-step: r_{i,e} = π_e L_{i,e} / Σ_e' π_e' L_{i,e'} (the posterior the router would reach at the sequence end);
    M-step: π_e = mean_i r_{i,e}. Monotone in Σ_i log Σ_e π_e L_{i,e}; 200 iterations of two scalars cost nothing.
    """
    ll = seq_loglik.double() / temperature
    log_pi = torch.full((ll.shape[1],), -math.log(ll.shape[1]), dtype=torch.float64)
    for _ in range(iters):
        r = torch.softmax(log_pi + ll, dim=-1)
        log_pi = torch.log(r.mean(0).clamp(min=1e-12))
    return log_pi.exp().float()
