"""One leaderboard across metrics: the median of standardised per-metric ranks, with bootstrap intervals.

Following LATEC (Klein et al., "Navigating the Maze of Explainable AI: A Systematic Approach to Evaluating
Methods and Metrics", NeurIPS 2024 Datasets & Benchmarks; ``src/main/main_rank.py`` of IML-DKFZ/latec),
methods are ranked per metric in the metric's own direction (rank 1 = best) and the per-metric ranks
are aggregated across metrics. LATEC ranks on the median of min-max normalised per-observation scores and
averages the ranks of a metric family; here (as issue 15 asks) each method's per-metric value is the
metric's own aggregate (a mean, a mean of class means, MaxBoxAcc's maximum, ...), ranks are standardised
to ``(rank - 1) / (methods ranked on that metric - 1)`` in [0, 1] so metrics measured on fewer methods
weigh the same, and the aggregate is their **median** (one metric that disagrees with all others cannot
move it). The leaderboard position is the rank of that median (ties share the best position).

Uncertainty: the images are resampled (the same resamples for every method and metric, so comparisons
stay paired), every metric is recomputed, the whole ranking is redone, and each method's position gets
the percentile interval of its positions across resamples, shown as ``2 [1–4]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from evalcam.stats.aggregation import Aggregation
from evalcam.stats.bootstrap import resampled_values


@dataclass(frozen=True)
class Standing:
    method: str
    position: int  # 1 = best
    low: int
    high: int
    score: float  # median standardised rank, 0 = best on every metric

    def __str__(self) -> str:
        return f"{self.method} {self.position} [{self.low}–{self.high}]"


def positions(values: np.ndarray, higher: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Leaderboard positions ``[..., M]`` and median standardised ranks from metric values ``[..., M, K]``
    (NaN: not measured; left out of that metric's ranking)."""
    signs = np.where(np.asarray(higher, dtype=bool), -1.0, 1.0)  # smaller is better after the sign
    oriented = values * signs
    measured = np.isfinite(oriented)
    ranks = rankdata(np.where(measured, oriented, np.inf), axis=-2, method="average")
    counts = measured.sum(-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        standard = np.where(measured & (counts > 1), (ranks - 1) / (counts - 1), np.nan)
    usable = np.isfinite(standard).any(-1)
    score = np.full(standard.shape[:-1], np.inf)
    if usable.any():
        score[usable] = np.nanmedian(standard[usable], axis=-1)
    return rankdata(score, axis=-1, method="min").astype(np.int64), score


def leaderboard(
    methods: Sequence[str],
    matrices: Sequence[Sequence[np.ndarray | None]],
    aggregations: Sequence[Aggregation],
    higher: Sequence[bool],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Standing]:
    """Standings, best first. ``matrices[m][k]``: method ``m``'s per-image contributions to metric ``k``
    on the shared images (None: not measured), ``aggregations[k]`` and ``higher[k]`` per metric."""
    if len(methods) < 2 or not aggregations:
        raise ValueError("a ranking needs at least two methods and one metric with a direction")
    m_count, k_count = len(methods), len(aggregations)
    cells = [(m, k) for m in range(m_count) for k in range(k_count) if matrices[m][k] is not None]
    point = np.full((m_count, k_count), np.nan)
    for m, k in cells:
        point[m, k] = aggregations[k].value(matrices[m][k].sum(0)[None])[0]
    place, score = positions(point, higher)
    sampled = np.full((resamples, m_count, k_count), np.nan)
    flat = resampled_values(
        [matrices[m][k] for m, k in cells], [aggregations[k] for _, k in cells], resamples, seed
    )
    for j, (m, k) in enumerate(cells):
        sampled[:, m, k] = flat[:, j]
    places, _ = positions(sampled, higher)
    tail = (1 - confidence) / 2
    low = np.quantile(places, tail, axis=0, method="lower")
    high = np.quantile(places, 1 - tail, axis=0, method="higher")
    out = [
        Standing(methods[m], int(place[m]), int(low[m]), int(high[m]), float(score[m]))
        for m in range(m_count)
    ]
    return sorted(out, key=lambda s: (s.position, s.method))
