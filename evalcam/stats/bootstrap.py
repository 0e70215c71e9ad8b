"""Percentile bootstrap over images (Efron & Tibshirani 1993, ch. 13) for every logged value of a run.

A resample draws ``n`` images with replacement; all resamples of a block are drawn at once as an index
matrix and turned into multiplicities ``W [b, n]``, so every metric of the run is re-estimated on every
resample by one matrix product ``W @ X`` (see :mod:`evalcam.stats.aggregation`). The same resamples serve
all metrics of a run (they are the same images). The interval is the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles of the resampled values (NumPy's default linear interpolation).
Randomness comes only from ``seed`` (a ``numpy.random.default_rng``); no global RNG state is touched.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from evalcam.stats.aggregation import Aggregation

if TYPE_CHECKING:
    from evalcam.metrics.base import Metric

log = logging.getLogger(__name__)

# Resamples per matrix product: bounds memory to block * n multiplicities (8 MB per 10k images).
BLOCK = 100


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return format_interval(self.value, self.low, self.high)


def format_number(value: float, digits: int = 4) -> str:
    """``digits`` decimals; values of 1e6 or more in magnitude (unbounded scores such as the relative
    stabilities) in scientific notation, which a fixed-point column would print as 30 digits."""
    if math.isfinite(value) and abs(value) >= 1e6:
        return f"{value:.{max(digits, 2)}e}"
    return f"{value:.{digits}f}"


def format_interval(value: float, low: float | None, high: float | None, digits: int = 4) -> str:
    """``47.5 [38.1, 57.0]`` (or the bare value when there is no interval)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return format_number(value, digits)
    return f"{format_number(value, digits)} [{format_number(low, digits)}, {format_number(high, digits)}]"


def check_settings(resamples: int, confidence: float) -> None:
    if int(resamples) < 1:
        raise ValueError(
            f"stats.bootstrap={resamples} must be >= 1 (0 disables intervals: stats.bootstrap=null)"
        )
    if not 0 < float(confidence) < 1:
        raise ValueError(f"stats.confidence={confidence} must lie strictly between 0 and 1, e.g. 0.95")


def resample_indices(n: int, resamples: int, seed: int, block: int = BLOCK) -> Iterator[np.ndarray]:
    """Blocks ``[b, n]`` of image indices drawn with replacement, ``resamples`` rows in all."""
    rng = np.random.default_rng(int(seed))
    for start in range(0, int(resamples), block):
        yield rng.integers(0, n, size=(min(block, resamples - start), n))


def resample_counts(n: int, resamples: int, seed: int, block: int = BLOCK) -> Iterator[np.ndarray]:
    """The same resamples as :func:`resample_indices`, as multiplicities ``W [b, n]`` (float64)."""
    for index in resample_indices(n, resamples, seed, block):
        b = len(index)
        flat = (index + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def resampled_values(
    matrices: Sequence[np.ndarray], aggregations: Sequence[Aggregation], resamples: int, seed: int
) -> np.ndarray:
    """``[R, A]``: every aggregation re-estimated on each of ``resamples`` shared image resamples."""
    n = len(matrices[0])
    # Several values often read the same records (MaxBoxAcc's eight values, two hit-count matrices):
    # multiply each distinct matrix once.
    distinct: dict[bytes, int] = {}
    unique: list[np.ndarray] = []
    slot = []
    for matrix in matrices:
        key = hashlib.sha1(np.ascontiguousarray(matrix).tobytes()).digest() + str(matrix.shape).encode()
        if key not in distinct:
            distinct[key] = len(unique)
            unique.append(matrix)
        slot.append(distinct[key])
    widths = np.cumsum([0, *(m.shape[1] for m in unique)])
    stacked = np.concatenate(unique, axis=1)
    out = []
    for counts in resample_counts(n, resamples, seed):
        sums = counts @ stacked
        out.append(
            np.stack(
                [
                    agg.value(sums[:, widths[u] : widths[u + 1]])
                    for agg, u in zip(aggregations, slot, strict=True)
                ],
                axis=1,
            )
        )
    return np.concatenate(out, axis=0)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of resampled values along axis 0 (NaN resamples, e.g. no evaluated pair, are
    left out)."""
    tail = (1 - float(confidence)) / 2
    with np.errstate(all="ignore"):
        if np.isnan(values).all():
            return float("nan"), float("nan")
        low, high = np.nanquantile(values, [tail, 1 - tail], axis=0)
    return float(low), float(high)


def bootstrap(
    matrix: np.ndarray,
    aggregation: Aggregation,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Point value and percentile interval of one aggregation over per-image contributions ``matrix``."""
    check_settings(resamples, confidence)
    value = float(aggregation.value(matrix.sum(0)[None])[0])
    low, high = percentile_interval(
        resampled_values([matrix], [aggregation], resamples, seed)[:, 0], confidence
    )
    return Interval(value, low, high)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def evaluated_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The images a run evaluated (skipped images carry no metric records), in image-id order: the
    resamples must not depend on the order batches or processes (torchrun) wrote their parts in."""
    if "status" in table.columns:
        table = table[table["status"] == "ok"]
    if "image_id" in table.columns:
        table = table.sort_values("image_id", kind="stable")
    return table.reset_index(drop=True)


def run_intervals(
    metrics: Sequence[Metric],
    table: pd.DataFrame,
    values: Mapping[str, float],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``{"<metric>/<key>/ci_low": ..., "<metric>/<key>/ci_high": ...}`` for every logged value whose
    metric says how to re-estimate it (:meth:`evalcam.metrics.base.Metric.aggregations`).

    A value is left without an interval (and a warning says why) when its records are missing or do not
    reproduce the logged value: an interval around another number would be a plausible wrong number.
    """
    check_settings(resamples, confidence)
    table = evaluated_rows(table)
    if len(table) < 2:
        return {}
    names, aggs, mats = [], [], []
    for metric in metrics:
        keys = [k.split("/", 1)[1] for k in values if k.startswith(f"{metric.name}/")]
        for key, agg in metric.aggregations(keys).items():
            logged = values.get(f"{metric.name}/{key}")
            if logged is None or math.isnan(logged):
                continue
            matrix = agg.contributions(table)
            if matrix is None:
                log.warning("%s/%s: per-image records missing; no interval", metric.name, key)
                continue
            point = float(agg.value(matrix.sum(0)[None])[0])
            if not _close(point, float(logged)):
                log.warning(
                    "%s/%s: per-image records give %.6g, the run logged %.6g; no interval",
                    metric.name,
                    key,
                    point,
                    logged,
                )
                continue
            names.append(f"{metric.name}/{key}")
            aggs.append(agg)
            mats.append(matrix)
    if not names:
        return {}
    resampled = resampled_values(mats, aggs, resamples, seed)
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        low, high = percentile_interval(resampled[:, j], confidence)
        if not (math.isnan(low) or math.isnan(high)):
            out[f"{name}/ci_low"], out[f"{name}/ci_high"] = low, high
    return out
