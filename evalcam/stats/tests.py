"""Paired significance tests on shared images, and Holm's step-down correction.

:func:`paired_test` is a two-sided paired randomization test (Fisher 1935; Pitman 1937): under the null
hypothesis that two methods are exchangeable on every image, swapping their records on any subset of
images leaves the distribution of the difference of the metric unchanged. Each permutation swaps every
image with probability 1/2, the metric is recomputed for both sides through its aggregation (so the test
respects per-class means and the threshold choice of MaxBoxAcc, like the bootstrap), and the p-value is
``(1 + #{|d*| >= |d|}) / (1 + permutations)`` (Phipson & Smyth 2010: never 0, exact level). For a
per-image mean this is the sign-flip test of the mean difference.

:func:`holm` is Holm's (1979) step-down adjustment, controlling the family-wise error rate over the
comparisons of one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evalcam.stats.aggregation import Aggregation

BLOCK = 200


@dataclass(frozen=True)
class PairedResult:
    difference: float  # value(a) - value(b) on the shared images
    p_value: float


def paired_test(
    a: np.ndarray, b: np.ndarray, aggregation: Aggregation, permutations: int = 2000, seed: int = 0
) -> PairedResult:
    """Two-sided paired randomization test of ``value(a) - value(b)``; ``a`` and ``b`` are the per-image
    contributions ``[N, C]`` of two runs on the same images, row ``i`` = image ``i`` in both."""
    if a.shape != b.shape:
        raise ValueError(
            f"paired records differ in shape {a.shape} vs {b.shape}; align them on shared images"
        )
    if int(permutations) < 1:
        raise ValueError(f"permutations={permutations} must be >= 1")
    total_a, total_b = a.sum(0), b.sum(0)
    observed = float(aggregation.value(total_a[None])[0] - aggregation.value(total_b[None])[0])
    if not np.isfinite(observed):
        return PairedResult(observed, float("nan"))
    delta = b - a  # what swapping image i moves from a's side to b's
    rng = np.random.default_rng(int(seed))
    extreme = 0
    # A tolerance keeps ties (|d*| == |d| up to round-off, e.g. the identity permutation) counted.
    bound = abs(observed) * (1 - 1e-9) - 1e-12
    for start in range(0, int(permutations), BLOCK):
        swap = rng.integers(0, 2, size=(min(BLOCK, permutations - start), len(a))).astype(np.float64)
        moved = swap @ delta
        d = aggregation.value(total_a + moved) - aggregation.value(total_b - moved)
        extreme += int(np.count_nonzero(np.abs(np.nan_to_num(d, nan=np.inf)) >= bound))
    return PairedResult(observed, (1 + extreme) / (1 + int(permutations)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given; NaN stays NaN and does not count as a comparison)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()
