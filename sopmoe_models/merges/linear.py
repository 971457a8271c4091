"""WiSE-FT linear interpolation (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", eq. 1).

    θ = (1 − α)·θ_f + α·θ_s        α = 0: the foundation, α = 1: the sft

Tensor maths: ``peft.utils.merge_utils.task_arithmetic`` on the stacked *full* weights [θ_f, θ_s] with weights
[1 − α, α] (a weighted sum), so α = 0 and α = 1 return the inputs exactly.
"""

from __future__ import annotations

import torch
from peft.utils.merge_utils import task_arithmetic

REFERENCE_URL = "https://arxiv.org/abs/2109.01903"
PARAMETERS = ("weight",)
SEARCH = {"weight": (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)}


def merge(theta_f: torch.Tensor, theta_s: torch.Tensor, *, weight: float, **_: object) -> torch.Tensor:
    weights = torch.tensor([1.0 - weight, weight], dtype=theta_f.dtype, device=theta_f.device)
    return task_arithmetic([theta_f, theta_s], weights)
