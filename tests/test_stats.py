"""Intervals of the leaderboard: Wilson (non-degenerate at 0 and 1) and the paired bootstrap."""

from __future__ import annotations

import pytest

from harness.stats import paired_bootstrap, wilson


def test_wilson_is_not_degenerate_at_the_ends_and_matches_the_formula():
    lo, hi = wilson(0, 200)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.01885, abs=1e-4)
    lo, hi = wilson(200, 200)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.01885, abs=1e-4)
    lo, hi = wilson(50, 100)  # textbook value: [0.4038, 0.5962]
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)


def test_paired_bootstrap_pairs_examples_and_is_deterministic():
    a = [[1] * 100 + [0] * 100]
    b = [[1] * 100 + [0] * 100]
    r = paired_bootstrap(a, b)
    assert r["diff"] == 0 and r["low"] == 0 and r["high"] == 0  # identical per example: paired CI has no width
    a2 = [[1] * 150 + [0] * 50, [1] * 140 + [0] * 60]
    b2 = [[1] * 100 + [0] * 100, [1] * 100 + [0] * 100]
    r2 = paired_bootstrap(a2, b2, seed=3)
    assert r2 == paired_bootstrap(a2, b2, seed=3)
    assert r2["diff"] == pytest.approx(0.225) and 0 < r2["low"] < 0.225 < r2["high"] < 0.35
    with pytest.raises(ValueError):
        paired_bootstrap([[1, 0]], [[1]])
