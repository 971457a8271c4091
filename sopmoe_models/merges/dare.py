"""DARE: Drop And REscale (Yu et al. 2024, "Language Models are Super Mario", ICML; eq. 2).

    τ = θ_s − θ_f
    m ~ Bernoulli(density) per entry         (drop rate p = 1 − density)
    τ̃ = m ⊙ τ / density                      (rescale keeps E[τ̃] = τ)
    θ = θ_f + λ·τ̃

Tensor maths: ``peft.utils.merge_utils.dare_linear([τ], [λ], density)`` (``prune(..., "random", rescale=True)``,
i.e. ``torch.bernoulli`` then division by ``density``). With one task vector ``dare_ties`` is the same thing (the
sign election is trivial), so ``dare`` here is DARE applied to task arithmetic. peft draws the mask from torch's
global generator; :func:`merge` seeds it per tensor inside ``torch.random.fork_rng`` so a merge is reproducible from
``seed`` (on the same device type) and leaves the caller's random state untouched.
"""

from __future__ import annotations

import warnings

import torch
from peft.utils.merge_utils import dare_linear

REFERENCE_URL = "https://arxiv.org/abs/2311.03099"
PARAMETERS = ("scale", "density", "seed")
# --auto searches density and scale together: at scale 1 every density stays close to the sft (trimming/dropping
# only sparsifies the task vector), so a density-only search cannot find a merge that keeps the foundation's skills.
SEARCH = {"density": (0.1, 0.2, 0.5, 0.8, 1.0), "scale": (0.25, 0.5, 0.75, 1.0)}


def merge(
    theta_f: torch.Tensor, theta_s: torch.Tensor, *, scale: float, density: float, tensor_seed: int, **_: object
) -> torch.Tensor:
    """``tensor_seed`` seeds this tensor's drop mask (see :func:`sopmoe_models.merges.tensor_seed`)."""
    tau = theta_s - theta_f
    weights = torch.tensor([scale], dtype=tau.dtype, device=tau.device)
    devices = [tau.device] if tau.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning")
        torch.manual_seed(tensor_seed)
        return theta_f + dare_linear([tau], weights, density)
