"""Weight-space merges of foundation and sft: 1x-cost baselines for every 2x fusion (DESIGN §4).

One method per module, each citing its paper; the tensor maths is peft's (``peft.utils.merge_utils``):

============  ==============================  =========================================  ===========================
method        formula (τ = θ_s − θ_f)          peft function                              parameters
============  ==============================  =========================================  ===========================
linear        (1 − α)·θ_f + α·θ_s              task_arithmetic([θ_f, θ_s], [1 − α, α])    weight α (0 = foundation)
task_arith.   θ_f + λ·τ                        task_arithmetic([τ], [λ])                  scale λ
ties          θ_f + λ·trim_d(τ)  (one task)    ties([τ], [λ], d)                          scale λ, density d
dare          θ_f + λ·(m ⊙ τ)/d, m~Bern(d)     dare_linear([τ], [λ], d)                   scale λ, density d, seed
============  ==============================  =========================================  ===========================

Precision: each tensor is merged in float64 when stored in float32 (float32 when stored in 16 bits) and rounded
once to the foundation's dtype, so α = 0/1 and λ = 0/1 give back the inputs bit for bit.

What is merged: every floating-point *parameter*, visited once through ``named_parameters()`` so tied weights
(``tie_word_embeddings``) are merged once and stay tied. Buffers and non-float tensors are the foundation's. The
merged model is a copy of the foundation (its config, generation config and tokenizer).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from sopmoe_models.experts import (
    ExpertMismatchError,
    ExpertPair,
    check_full_precision,
    check_same_architecture,
    check_same_tokenizer,
)
from sopmoe_models.merges import dare, linear, task_arithmetic, ties

log = logging.getLogger(__name__)

Method = Literal["linear", "task_arithmetic", "ties", "dare"]
METHODS: dict[str, ModuleType] = {"linear": linear, "task_arithmetic": task_arithmetic, "ties": ties, "dare": dare}
PEFT_FUNCTIONS = {
    "linear": "peft.utils.merge_utils.task_arithmetic",
    "task_arithmetic": "peft.utils.merge_utils.task_arithmetic",
    "ties": "peft.utils.merge_utils.ties",
    "dare": "peft.utils.merge_utils.dare_linear",
}
# Config keys that may differ between a model and its fine-tune without changing what the weights mean.
_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache"}


@dataclass(frozen=True)
class MergeParams:
    """A merge method and its parameters (only those in ``METHODS[method].PARAMETERS`` are used)."""

    method: Method = "linear"
    weight: float = 0.5
    scale: float = 1.0
    density: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"merge method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"merge weight {self.weight} must be in [0, 1] (0 = foundation, 1 = sft)")
        if not torch.isfinite(torch.tensor(float(self.scale))):
            raise ValueError(f"merge scale {self.scale} must be a finite number")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"merge density {self.density} must be in (0, 1]")

    @property
    def module(self) -> ModuleType:
        return METHODS[self.method]

    def used(self) -> dict[str, Any]:
        """The parameters this method reads, e.g. ``{"scale": 1.0, "density": 0.5}`` for TIES."""
        return {k: v for k, v in asdict(self).items() if k in self.module.PARAMETERS}

    def with_(self, **changes: Any) -> MergeParams:
        return replace(self, **changes)


def tensor_seed(seed: int, name: str) -> int:
    """The seed of one tensor's DARE mask: a hash of (seed, tensor name), independent of visiting order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if t.device.type == "mps":  # no float64 on Apple GPUs
        return torch.float32
    return torch.float64 if t.dtype in (torch.float32, torch.float64) else torch.float32


@torch.no_grad()
def merge_tensor(theta_f: torch.Tensor, theta_s: torch.Tensor, params: MergeParams, name: str = "") -> torch.Tensor:
    """Merge one floating-point tensor; returns it in ``theta_f``'s dtype and device."""
    if theta_f.shape != theta_s.shape:
        raise ExpertMismatchError(
            f"tensor {name} differs in shape: {tuple(theta_f.shape)} vs {tuple(theta_s.shape)}"
        )
    cdt = _compute_dtype(theta_f)
    f = theta_f.to(cdt)
    s = theta_s.to(device=theta_f.device, dtype=cdt)
    out = params.module.merge(
        f, s, weight=params.weight, scale=params.scale, density=params.density,
        tensor_seed=tensor_seed(params.seed, name),
    )
    return out.to(theta_f.dtype)


def merge_state_dicts(
    foundation: Mapping[str, torch.Tensor], sft: Mapping[str, torch.Tensor], params: MergeParams
) -> dict[str, torch.Tensor]:
    """Merge two state dicts with the same names and shapes; non-float tensors are the foundation's.

    Entries that share storage in ``foundation`` (tied weights) are merged once and share the result.
    """
    for name in sorted(set(foundation) | set(sft)):
        if name not in foundation or name not in sft:
            raise ExpertMismatchError(f"tensor {name} exists in only one of the experts")
        if foundation[name].shape != sft[name].shape:
            shapes = f"{tuple(foundation[name].shape)} vs {tuple(sft[name].shape)}"
            raise ExpertMismatchError(f"tensor {name} differs in shape: {shapes}")
    out: dict[str, torch.Tensor] = {}
    done: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    for name, tf in foundation.items():
        ts = sft[name]
        if not tf.is_floating_point():
            out[name] = tf.clone()
            continue
        key = (tf.untyped_storage().data_ptr(), tf.storage_offset(), tuple(tf.shape))
        if key not in done:
            done[key] = merge_tensor(tf, ts, params, name)
        out[name] = done[key]
    return out


def check_mergeable(foundation: nn.Module, sft: nn.Module) -> None:
    """Same architecture, same tensor names and shapes (errors name the tensor), same weight tying."""
    check_same_architecture(foundation, sft, strict_shapes=True)
    pf = {n for n, _ in foundation.named_parameters()}
    ps = {n for n, _ in sft.named_parameters()}
    for name in sorted(pf ^ ps):
        where, other = ("sft", "foundation") if name in pf else ("foundation", "sft")
        raise ExpertMismatchError(
            f"tensor {name} is tied to another tensor in the {where} but not in the {other} "
            "(tie_word_embeddings differs); merge needs the same weight tying"
        )
    cf, cs = getattr(foundation, "config", None), getattr(sft, "config", None)
    if cf is not None and cs is not None:
        df, ds = cf.to_dict(), cs.to_dict()
        differ = sorted(k for k in set(df) | set(ds) if k not in _IGNORED_CONFIG_KEYS and df.get(k) != ds.get(k))
        if differ:
            log.warning("foundation and sft configs differ in %s; the merged model keeps the foundation's",
                        ", ".join(differ))


def _experts(pair_or_models: ExpertPair | Sequence[nn.Module]) -> tuple[nn.Module, nn.Module]:
    if isinstance(pair_or_models, ExpertPair):
        return pair_or_models.foundation, pair_or_models.sft
    models = tuple(pair_or_models)
    if len(models) != 2 or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("merge_models takes an ExpertPair or a (foundation, sft) pair of nn.Modules")
    return models[0], models[1]


@torch.no_grad()
def merge_into(target: nn.Module, foundation: nn.Module, sft: nn.Module, params: MergeParams) -> nn.Module:
    """Write the merge of ``foundation`` and ``sft`` into ``target``'s parameters (same architecture as both).

    ``target`` may be ``foundation`` itself (merge in place, no third copy) or a reusable copy of it (the
    ``--auto`` search merges many parameter values into one copy). Buffers of ``target`` are left as they are.
    """
    check_mergeable(foundation, sft)
    f_params = dict(foundation.named_parameters())
    s_state = sft.state_dict()
    for name, p in target.named_parameters():
        if not p.is_floating_point():
            p.copy_(f_params[name])
            continue
        p.copy_(merge_tensor(f_params[name], s_state[name], params, name))
    return target


def merge_models(
    pair_or_models: ExpertPair | Sequence[nn.Module],
    method: Method = "linear",
    weight: float = 0.5,
    scale: float = 1.0,
    density: float = 0.5,
    seed: int = 0,
    *,
    tokenizers: tuple[Any, Any] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """The merged model (frozen, eval mode): a copy of the foundation holding the merged weights.

    ``pair_or_models``: an :class:`ExpertPair` (tokenizers already checked by ``load_experts``) or
    ``(foundation, sft)`` modules, with ``tokenizers=(tok_f, tok_s)`` to check theirs. ``inplace=True`` writes
    into the foundation module itself (saves one model's memory; the pair's foundation is then the merge).
    """
    params = MergeParams(method, weight, scale, density, seed)
    foundation, sft = _experts(pair_or_models)
    for role, model in (("foundation", foundation), ("sft", sft)):
        check_full_precision(model, role, "a weight merge")  # never merge (nor write) quantized weights
    if tokenizers is not None:
        check_same_tokenizer(*tokenizers)
    target = foundation if inplace else copy.deepcopy(foundation)
    merge_into(target, foundation, sft, params)
    log.info("merged foundation and sft with %s %s", method, params.used())
    return target.eval().requires_grad_(False)
