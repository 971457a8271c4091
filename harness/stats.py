"""Intervals for the leaderboard (issue 11): Wilson score intervals for rates and a paired bootstrap for differences.

- :func:`wilson`: the 95% Wilson score interval of k successes in n trials. Unlike the normal ("± stderr")
  interval it is not degenerate at 0/n or n/n (lm-eval's stderr is 0 there, which reads as certainty).
- :func:`paired_bootstrap`: the 95% percentile interval of mean(acc_A) − mean(acc_B) over seeds, where each seed's
  test examples are resampled with replacement and *the same* resample is applied to both models (paired: every
  example is scored by both, so its difficulty cancels). Deterministic for a given seed of the resampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for k successes in n trials (k may be a mean × n over seeds)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], *, replicates: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Mean over seeds of mean(a_s) − mean(b_s), with its paired bootstrap 95% interval.

    ``a[s][i]`` and ``b[s][i]`` are the 0/1 results of the two models on example ``i`` of seed ``s`` (same order).
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap: both models need results for the same, non-empty list of seeds")
    diffs = []
    for xs, ys in zip(a, b):
        if len(xs) != len(ys) or not xs:
            raise ValueError("paired_bootstrap: both models need results on the same examples of each seed")
        diffs.append([x - y for x, y in zip(xs, ys)])
    import numpy as np

    point = sum(sum(d) / len(d) for d in diffs) / len(diffs)
    rng = np.random.default_rng(seed)
    stats = np.zeros(replicates)
    for d in diffs:
        arr = np.asarray(d, dtype=np.float64)
        stats += arr[rng.integers(0, len(arr), size=(replicates, len(arr)))].mean(axis=1)
    stats = np.sort(stats / len(diffs))
    lo = float(stats[int(0.025 * (replicates - 1))])
    hi = float(stats[int(math.ceil(0.975 * (replicates - 1)))])
    return {"diff": point, "low": lo, "high": hi, "replicates": replicates, "seeds": len(diffs)}
