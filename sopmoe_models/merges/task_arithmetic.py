"""Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic", ICLR; §2).

    τ = θ_s − θ_f                  the task vector of the fine-tune
    θ = θ_f + λ·τ                  λ = 0: the foundation, λ = 1: the sft, λ > 1 extrapolates, λ < 0 negates

Tensor maths: ``peft.utils.merge_utils.task_arithmetic([τ], [λ])`` (= λ·τ), added to θ_f.
"""

from __future__ import annotations

import torch
from peft.utils.merge_utils import task_arithmetic

REFERENCE_URL = "https://arxiv.org/abs/2212.04089"
PARAMETERS = ("scale",)
SEARCH = {"scale": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)}


def merge(theta_f: torch.Tensor, theta_s: torch.Tensor, *, scale: float, **_: object) -> torch.Tensor:
    tau = theta_s - theta_f
    return theta_f + task_arithmetic([tau], torch.tensor([scale], dtype=tau.dtype, device=tau.device))
