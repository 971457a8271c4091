"""Properties of the distillation losses (training/kd_losses.py): pure tensor maths, milliseconds."""

from __future__ import annotations

import math

import pytest
import torch

from sopmoe_models.data import IGNORE_INDEX
from training.kd_losses import (
    TopKTeacher,
    distill_loss,
    kd_per_token,
    select_output_positions,
    topk_teacher,
)

V = 11


def _batch(seed=0, B=3, T=7, V=V):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g) * 2
    teacher = torch.log_softmax(torch.randn(B, T, V, generator=g) * 2, -1)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = IGNORE_INDEX  # prompt
    labels[1, 5:] = IGNORE_INDEX  # padding of a shorter row
    return student, teacher, labels


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_zero_for_identical_distributions(kind):
    s, _, labels = _batch()
    teacher = torch.log_softmax(s + 3.0, -1)  # same distribution, shifted logits
    out = distill_loss(s, labels, teacher, temperature=2.0, kind=kind, distill_loss_weight=1, task_loss_weight=0)
    assert abs(out.kd.item()) < 1e-6
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)


def test_positive_for_different_distributions():
    s, t, labels = _batch()
    for kind in ("forward", "reverse", "jsd"):
        assert distill_loss(s, labels, t, kind=kind).kd.item() > 1e-3


def test_t_squared_scaling():
    """At a fixed pair of tempered distributions the loss is T² times the plain KL."""
    s, t, labels = _batch()
    rows_s, _ = select_output_positions(s, labels)
    rows_t, _ = select_output_positions(t, labels)
    for T in (0.5, 2.0, 4.0):
        # Feed logits already multiplied by T, so the tempered distributions equal the T=1 ones.
        scaled = kd_per_token(rows_s * T, rows_t * T, temperature=T)
        plain = kd_per_token(rows_s, rows_t, temperature=1.0)
        torch.testing.assert_close(scaled, T**2 * plain, rtol=1e-4, atol=1e-5)


def test_prompt_and_padding_are_masked():
    s, t, labels = _batch()
    base = distill_loss(s, labels, t, temperature=2.0)
    masked = torch.zeros_like(labels, dtype=torch.bool)
    masked[:, :-1] = labels[:, 1:] == IGNORE_INDEX  # positions that predict a prompt or pad token
    s2, t2 = s.clone(), t.clone()
    s2[masked] = torch.randn_like(s2[masked]) * 10
    t2[masked] = torch.log_softmax(torch.randn_like(t2[masked]) * 10, -1)
    s2[:, -1] = 99.0  # the last position predicts nothing
    other = distill_loss(s2, labels, t2, temperature=2.0)
    torch.testing.assert_close(other.loss, base.loss)
    assert base.n_tokens == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_mean_per_output_token_not_batchmean():
    """Adding a row of pure padding must not change the per-token mean."""
    s, t, labels = _batch()
    base = distill_loss(s, labels, t)
    pad_row = torch.full_like(labels[:1], IGNORE_INDEX)
    more = distill_loss(torch.cat([s, s[:1]]), torch.cat([labels, pad_row]), torch.cat([t, t[:1]]))
    torch.testing.assert_close(more.loss, base.loss)


def _direct_float64(s, t, labels, T, w_kd, w_ce, kind="forward", beta=0.5):
    kd_total, ce_total, n = 0.0, 0.0, 0
    s, t = s.double(), t.double()
    for b in range(labels.shape[0]):
        for pos in range(labels.shape[1] - 1):
            y = int(labels[b, pos + 1])
            if y == IGNORE_INDEX:
                continue
            p = torch.softmax(t[b, pos] / T, -1)
            q = torch.softmax(s[b, pos] / T, -1)
            if kind == "forward":
                d = float((p * (p.log() - q.log())).sum())
            elif kind == "reverse":
                d = float((q * (q.log() - p.log())).sum())
            else:
                m = beta * p + (1 - beta) * q
                d = float(beta * (p * (p.log() - m.log())).sum() + (1 - beta) * (q * (q.log() - m.log())).sum())
            kd_total += T * T * d
            ce_total += -float(torch.log_softmax(s[b, pos], -1)[y])
            n += 1
    return w_kd * kd_total / n + w_ce * ce_total / n


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_agrees_with_direct_float64(kind):
    s, t, labels = _batch(seed=3)
    got = distill_loss(s, labels, t, temperature=1.7, distill_loss_weight=0.3, task_loss_weight=0.9, kind=kind, beta=0.3)
    want = _direct_float64(s, t, labels, 1.7, 0.3, 0.9, kind=kind, beta=0.3)
    assert got.loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_jsd_beta_limits():
    s, t, labels = _batch(seed=5)
    rows_s, _ = select_output_positions(s, labels)
    rows_t, _ = select_output_positions(t, labels)
    rows_s, rows_t = rows_s.double(), rows_t.double()
    fwd = kd_per_token(rows_s, rows_t, 1.0, "forward")
    rev = kd_per_token(rows_s, rows_t, 1.0, "reverse")
    eps = 1e-8
    torch.testing.assert_close(kd_per_token(rows_s, rows_t, 1.0, "jsd", beta=eps) / eps, fwd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(kd_per_token(rows_s, rows_t, 1.0, "jsd", beta=1 - eps) / eps, rev, rtol=1e-4, atol=1e-6)
    half = kd_per_token(rows_s, rows_t, 1.0, "jsd", beta=0.5)
    assert bool((half <= math.log(2) + 1e-9).all()) and bool((half >= 0).all())
    with pytest.raises(ValueError, match="jsd_beta"):
        kd_per_token(rows_s, rows_t, 1.0, "jsd", beta=0.0)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_topk_with_k_equal_v_is_the_full_loss(kind):
    s, t, labels = _batch(seed=7)
    rows_t, _ = select_output_positions(t, labels)
    top = topk_teacher(rows_t, V, temperature=2.0)
    full = distill_loss(s, labels, t, temperature=2.0, kind=kind)
    cut = distill_loss(s, labels, top, temperature=2.0, kind=kind)
    torch.testing.assert_close(cut.loss, full.loss, rtol=1e-5, atol=1e-6)
    # Gradients are finite (the empty tail must not produce NaN).
    s_grad = s.clone().requires_grad_(True)
    distill_loss(s_grad, labels, top, temperature=2.0, kind=kind).loss.backward()
    assert torch.isfinite(s_grad.grad).all()


def test_topk_is_a_lower_bound_and_tail_mass_is_exact():
    s, t, labels = _batch(seed=9)
    rows_t, _ = select_output_positions(t, labels)
    top = topk_teacher(rows_t, 3, temperature=1.5)
    assert isinstance(top, TopKTeacher) and top.ids.shape == (len(rows_t), 3)
    total = top.logprobs.exp().sum(-1) + top.tail.exp()
    torch.testing.assert_close(total, torch.ones_like(total))
    full = distill_loss(s, labels, t, temperature=1.5, task_loss_weight=0)
    cut = distill_loss(s, labels, top, temperature=1.5, task_loss_weight=0)
    assert 0 <= cut.loss.item() <= full.loss.item() + 1e-6


def test_student_keeps_its_padded_rows_and_row_count_is_checked():
    """The student learns over all its rows: extra rows get teacher probability 0 (dense or top-k alike), so the
    KD term counts the student's mass there; a student narrower than the teacher is refused."""
    s, t, labels = _batch()
    dead = torch.cat([s, torch.full((*s.shape[:2], 3), -1e4)], dim=-1)  # padded rows with no mass: same loss
    torch.testing.assert_close(distill_loss(dead, labels, t).loss, distill_loss(s, labels, t).loss)
    live = torch.cat([s, torch.full((*s.shape[:2], 3), 5.0)], dim=-1)  # padded rows with mass: KD sees it
    assert distill_loss(live, labels, t).kd > distill_loss(s, labels, t).kd + 0.1
    rows_t, _ = select_output_positions(t, labels)
    top = topk_teacher(rows_t, V, temperature=2.0)
    torch.testing.assert_close(distill_loss(live, labels, top).kd, distill_loss(live, labels, t).kd, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="output tokens"):
        distill_loss(s, labels, rows_t[:-1])
    with pytest.raises(ValueError, match="student has 9 output rows"):
        distill_loss(s[..., :9], labels, t)
    with pytest.raises(ValueError, match="only 9 output rows"):
        distill_loss(s[..., :9], labels, top)


def test_normalizer_makes_split_batches_add_up():
    """Two halves normalised by the total token count sum to the whole batch's loss (what DDP relies on)."""
    s, t, labels = _batch(B=4)
    whole = distill_loss(s, labels, t)
    n = whole.n_tokens
    halves = [distill_loss(s[i : i + 2], labels[i : i + 2], t[i : i + 2], normalizer=n).loss for i in (0, 2)]
    torch.testing.assert_close(halves[0] + halves[1], whole.loss)
