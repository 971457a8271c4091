"""TIES-merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models", NeurIPS; Alg. 1).

For task vectors τ_t = θ_t − θ_f:
    1. trim:  keep the top-``density`` fraction of each τ_t by magnitude, zero the rest   -> τ̂_t
    2. elect: γ = sign(Σ_t τ̂_t)                                                          (per entry)
    3. disjoint mean: τ_m = Σ_{t: sign(τ̂_t) = γ} τ̂_t / |{t: sign(τ̂_t) = γ}|
    θ = θ_f + λ·τ_m

With one task vector (our case: the foundation is the base, the sft the only task) the elected sign is the sign of
τ̂ itself and the disjoint mean is τ̂, so TIES reduces to **magnitude-trimmed task arithmetic**:
θ = θ_f + λ·trim_density(θ_s − θ_f). ``density = 1`` is plain task arithmetic.

Tensor maths: ``peft.utils.merge_utils.ties([τ], [λ], density)`` (which calls ``prune(..., "magnitude")``,
``calculate_majority_sign_mask(..., "total")`` and ``disjoint_merge``). Like peft and mergekit, trimming is per
tensor (top-k within each weight matrix); the paper's reference code trims over the whole flattened model.
"""

from __future__ import annotations

import warnings

import torch
from peft.utils.merge_utils import ties

REFERENCE_URL = "https://arxiv.org/abs/2306.01708"
PARAMETERS = ("scale", "density")
# --auto searches density and scale together: at scale 1 every density stays close to the sft (trimming/dropping
# only sparsifies the task vector), so a density-only search cannot find a merge that keeps the foundation's skills.
SEARCH = {"density": (0.1, 0.2, 0.5, 0.8, 1.0), "scale": (0.25, 0.5, 0.75, 1.0)}


def merge(theta_f: torch.Tensor, theta_s: torch.Tensor, *, scale: float, density: float, **_: object) -> torch.Tensor:
    tau = theta_s - theta_f
    weights = torch.tensor([scale], dtype=tau.dtype, device=tau.device)
    with warnings.catch_warnings():  # peft warns that density 1 prunes nothing: that is what density 1 means
        warnings.filterwarnings("ignore", message="The density .* no pruning")
        return theta_f + ties([tau], weights, density)
