"""Knowledge-distillation losses as pure functions, averaged per output token.

Notation, per output position (a token the student must predict; prompt and padding are masked out):
``s`` student logits, ``p`` the teacher's next-token distribution (given as log-probs), ``T`` the temperature,
``p^(T) = softmax(log p / T)`` and ``q^(T) = softmax(s / T)`` the tempered distributions.

- forward KL (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", eq. 2 and the T² remark):
  ``KD_fwd = T² · Σ_v p^(T)_v (log p^(T)_v − log q^(T)_v)``. The T² keeps the gradient magnitude independent of T
  (the soft-target gradients scale as 1/T²).
- reverse KL: ``KD_rev = T² · Σ_v q^(T)_v (log q^(T)_v − log p^(T)_v)`` (mode seeking).
- generalised JSD (GKD, Agarwal et al. 2024, "On-Policy Distillation of Language Models", eq. 1), 0 < β < 1:
  ``m = β p^(T) + (1−β) q^(T)``, ``KD_jsd = T² · [β KL(p^(T) ‖ m) + (1−β) KL(q^(T) ‖ m)]``.
  Its limits: ``KD_jsd/β → KD_fwd`` as β → 0 and ``KD_jsd/(1−β) → KD_rev`` as β → 1.
- task cross-entropy: ``CE = −log softmax(s)_y`` for the reference token ``y``.
- total: ``L = distill_loss_weight · mean_tokens(KD) + task_loss_weight · mean_tokens(CE)``, where the mean is over
  output tokens (Σ over masked-in positions / their count), never ``batchmean`` over padded positions.

Top-k teacher (what the offline cache stores): the tempered teacher's ``k`` most likely tokens with their
log-probs plus the log of the remaining (tail) mass ``log(1 − Σ_k p^(T))``. The divergence is then taken between
the two (k+1)-bucket distributions — the top-k tokens and one bucket for the rest — with the student's buckets
computed exactly from its full tempered distribution. By the data-processing inequality this lower-bounds the full
divergence, and it equals it when ``k = V``.

Widths: the teacher is a fused model over the experts' full output width W (padded lm_head rows included: the
parity rule of :mod:`sopmoe_models.experts`) and the student keeps all its rows, so the student learns the
distribution it will be scored and run with. A student with more rows than W gets teacher probability 0 on the
extra ones; one with fewer cannot represent the teacher and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from sopmoe_models.data import output_mask

Divergence = Literal["forward", "reverse", "jsd"]
# log(0) stand-in: finite so that 0·(log a − log b) and its gradient stay 0 instead of NaN, and so small that
# exp() of it is exactly 0 in every floating type.
NEG = -1e30


@dataclass
class TopKTeacher:
    """A tempered teacher truncated to its top-k tokens; rows are output positions (N of them)."""

    logprobs: torch.Tensor  # (N, K) log p^(T) of the top-k tokens
    ids: torch.Tensor  # (N, K) int64 token ids
    tail: torch.Tensor  # (N,) log(1 − Σ_k p^(T)) (−inf / NEG when k = V)

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class DistillLoss:
    loss: torch.Tensor  # distill_loss_weight · kd + task_loss_weight · ce (what backward() is called on)
    kd: torch.Tensor  # mean KD per output token (detached)
    ce: torch.Tensor  # mean CE per output token (detached)
    n_tokens: int  # output tokens in this batch


def select_output_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``logits`` (B, T, W) that predict an output token: ((N, W) float32, targets (N,)), row-major."""
    mask = output_mask(labels)  # (B, T-1)
    rows = logits[:, :-1][mask]  # (N, W)
    return _f(rows), labels[:, 1:][mask]


def _fit_teacher(teacher: torch.Tensor, width: int) -> torch.Tensor:
    """Dense teacher log-probs (N, W_t) on the student's width: extra student rows get log 0; fewer is an error."""
    w_t = teacher.shape[-1]
    if w_t > width:
        raise ValueError(f"the student has {width} output rows but the teacher's distribution covers {w_t}; "
                         "a student must have at least the experts' output rows")
    return F.pad(teacher, (0, width - w_t), value=float("-inf")) if w_t < width else teacher


def _f(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 logits are upcast; float64 stays float64 for reference computations)."""
    return x if x.dtype == torch.float64 else x.float()


def temper(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p^(T) = log_softmax(log p / T) (also right for logits: softmax is shift invariant)."""
    return F.log_softmax(logprobs / temperature, dim=-1)


def topk_teacher(teacher_logprobs: torch.Tensor, k: int, temperature: float) -> TopKTeacher:
    """Truncate a teacher given as log-probs (N, V) at T = 1 to its tempered top-k plus tail mass."""
    lp = temper(_f(teacher_logprobs), temperature)
    k = min(k, lp.shape[-1])
    vals, ids = lp.topk(k, dim=-1)  # tempering is monotone: same ids as the untempered top-k
    return TopKTeacher(vals, ids, _tail_logmass(lp, ids))


def _tail_logmass(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log Σ_{v ∉ ids} exp(logprobs_v), computed directly (no cancellation in 1 − Σ top-k)."""
    rest = logprobs.scatter(-1, ids, NEG)
    return torch.logsumexp(rest, dim=-1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) = Σ a (log a − log b) over the last dim, with 0 · log 0 = 0."""
    log_a, log_b = log_a.clamp(min=NEG), log_b.clamp(min=NEG)
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _divergence(log_p: torch.Tensor, log_q: torch.Tensor, kind: Divergence, beta: float) -> torch.Tensor:
    """Per-row divergence between teacher ``log_p`` and student ``log_q`` (both normalised over the last dim)."""
    if kind == "forward":
        return _kl(log_p, log_q)
    if kind == "reverse":
        return _kl(log_q, log_p)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd_beta must be strictly between 0 and 1 (got {beta}); use kl: forward or reverse")
        log_m = torch.logsumexp(
            torch.stack([log_p.clamp(min=NEG) + math.log(beta), log_q.clamp(min=NEG) + math.log(1 - beta)]), dim=0
        )
        return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    raise ValueError(f"unknown divergence {kind!r}; choose forward, reverse or jsd")


def kd_per_token(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopKTeacher | None,
    temperature: float,
    kind: Divergence = "forward",
    beta: float = 0.5,
) -> torch.Tensor:
    """T² · D(p^(T), q^(T)) per row: (N,). ``teacher`` is log-probs (N, V) at T = 1, or a :class:`TopKTeacher`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = temper(_f(student_logits), temperature)  # (N, V)
    if isinstance(teacher, TopKTeacher):
        if teacher.ids.numel() and int(teacher.ids.max()) >= log_q.shape[-1]:
            raise ValueError(f"the teacher's top-k holds id {int(teacher.ids.max())} but the student has only "
                             f"{log_q.shape[-1]} output rows")
        # (N, K+1) buckets: the top-k tokens and the rest, for both distributions.
        log_p = torch.cat([_f(teacher.logprobs), _f(teacher.tail)[:, None]], dim=-1).to(log_q.dtype)
        log_q = torch.cat([log_q.gather(-1, teacher.ids), _tail_logmass(log_q, teacher.ids)[:, None]], dim=-1)
    else:
        if teacher.shape[:-1] != log_q.shape[:-1]:
            raise ValueError(f"teacher log-probs {tuple(teacher.shape)} and student logits {tuple(log_q.shape)} differ")
        log_p = temper(_fit_teacher(_f(teacher), log_q.shape[-1]), temperature)
    return temperature**2 * _divergence(log_p, log_q, kind, beta)


def ce_per_token(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log softmax(s)_y per row: (N,)."""
    return F.cross_entropy(_f(student_logits), targets, reduction="none")


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | TopKTeacher | None,
    *,
    temperature: float = 2.0,
    distill_loss_weight: float = 0.5,
    task_loss_weight: float = 0.5,
    kind: Divergence = "forward",
    beta: float = 0.5,
    normalizer: float | None = None,
) -> DistillLoss:
    """``distill_loss_weight · KD + task_loss_weight · CE``, each averaged per output token.

    ``student_logits`` (B, T, W_s) and ``labels`` (B, T) with prompt/padding = IGNORE_INDEX. ``teacher`` is either
    log-probs (B, T, W) aligned with the student (selected here with the same mask) or already one row per output
    token: (N, V) log-probs or a :class:`TopKTeacher`, rows in row-major order of :func:`select_output_positions`.
    ``normalizer`` divides the sums instead of this batch's token count (the trainer passes the token count of
    the whole accumulation window over all processes, so the result does not depend on how a batch is split).
    """
    s, targets = select_output_positions(student_logits, labels)
    n = s.shape[0]
    denom = float(normalizer) if normalizer is not None else float(max(n, 1))
    if teacher is None:  # no teacher: plain fine-tuning on the references (the replay baseline)
        ce = ce_per_token(s, targets).sum() / denom
        return DistillLoss(task_loss_weight * ce, torch.zeros((), device=ce.device), ce.detach(), n)
    if isinstance(teacher, torch.Tensor) and teacher.dim() == 3:
        teacher, _ = select_output_positions(teacher, labels)
    if len(teacher) != n:
        raise ValueError(f"teacher has {len(teacher)} rows but the batch has {n} output tokens")
    kd_sum = kd_per_token(s, teacher, temperature, kind, beta).sum()
    ce_sum = ce_per_token(s, targets).sum()
    kd, ce = kd_sum / denom, ce_sum / denom
    return DistillLoss(distill_loss_weight * kd + task_loss_weight * ce, kd.detach(), ce.detach(), n)
