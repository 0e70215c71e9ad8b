"""How a logged value is recomputed from a run's per-image records, in the form a bootstrap needs.

Every aggregation splits into a linear part and a cheap non-linear part: each image contributes a row
``x_i`` (``contributions``), a resample with image multiplicities ``w`` sums them, ``s = w @ X``, and
``value(s)`` turns the sums into the metric's number. All resamples of a bootstrap are then one matrix
product ``W @ X`` (no Python loop per resample), and the same rows serve the paired test (swap two runs'
rows image by image) and the ranking. Kinds:

- :class:`Mean`: ``offset + scale * mean`` over the images whose value is present (e.g. a localization
  error ``1 - mean(ok)``, Average Drop ``100 * mean(drop)``); a ratio of sums (hits / evaluated pairs)
  is a mean over its pairs, so it is this kind too, with ``weight``;
- :class:`ClassMean`: mean over classes of per-class accuracy (the pointing game, TorchRay): images are
  resampled and the per-class means recomputed inside each resample;
- :class:`BestThreshold`: MaxBoxAcc (Choe et al. 2020): the accuracy curve over CAM thresholds is
  recomputed inside each resample and its maximum taken there, so the threshold choice is redone on
  every resample (the interval includes the optimism of choosing it on the evaluated images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


class Aggregation:
    """Base: ``contributions(table) -> X [N, C]`` (None if the table lacks the columns) and
    ``value(S [R, C]) -> [R]``. Rows of ``table`` are images, in the order of ``X``."""

    def contributions(self, table: pd.DataFrame) -> np.ndarray | None:
        raise NotImplementedError

    def value(self, sums: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _numeric(series: pd.Series, item: int | None) -> np.ndarray:
    """Float values of a column (``item``: element of a list cell), NaN where absent."""
    if item is not None:
        reach = item if item >= 0 else -item - 1
        series = series.map(lambda v: v[item] if hasattr(v, "__len__") and len(v) > reach else None)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class Mean(Aggregation):
    """``offset + scale * sum(w * v) / sum(w)`` over images where ``column`` is present (and ``where`` is
    true): the per-image mean every metric uses by default (``<name>.<key>``)."""

    column: str
    scale: float = 1.0
    offset: float = 0.0
    where: str | None = None
    item: int | None = None

    def contributions(self, table: pd.DataFrame) -> np.ndarray | None:
        if self.column not in table.columns or (self.where and self.where not in table.columns):
            return None
        values = _numeric(table[self.column], self.item)
        present = np.isfinite(values)
        if self.where:
            present &= _numeric(table[self.where], None) > 0
        return np.stack([np.where(present, values, 0.0), present.astype(np.float64)], axis=1)

    def value(self, sums: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums[..., 0] / sums[..., 1]
        return np.where(sums[..., 1] > 0, self.offset + self.scale * mean, np.nan)


@dataclass(frozen=True)
class PairMean(Aggregation):
    """Mean over (image, class) pairs of a list column (one entry per pair; None, NaN or a negative
    entry when ``skip_negative`` is "not evaluated"): resampling images carries all their pairs."""

    column: str
    skip_negative: bool = False

    def contributions(self, table: pd.DataFrame) -> np.ndarray | None:
        if self.column not in table.columns:
            return None
        out = np.zeros((len(table), 2))
        for i, cell in enumerate(table[self.column]):
            if not hasattr(cell, "__len__"):
                continue
            values = np.array([np.nan if v is None else float(v) for v in cell], dtype=np.float64)
            ok = np.isfinite(values) & ~((values < 0) & self.skip_negative)
            out[i] = values[ok].sum(), ok.sum()
        return out

    def value(self, sums: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], np.nan)


@dataclass(frozen=True)
class ClassMean(Aggregation):
    """Mean over classes of ``hits / evaluated`` (classes evaluated at least once in the resample).

    ``classes`` and ``hits`` are list columns (one entry per ground-truth class of the image; a hit < 0
    means "not evaluated"); ``only`` (a bool list column) restricts to flagged entries (difficult subset).
    """

    classes: str
    hits: str
    only: str | None = None

    def contributions(self, table: pd.DataFrame) -> np.ndarray | None:
        needed = [self.classes, self.hits, *([self.only] if self.only else [])]
        if any(c not in table.columns for c in needed):
            return None
        rows = []
        for i, (classes, hits) in enumerate(zip(table[self.classes], table[self.hits], strict=True)):
            if classes is None or hits is None or not hasattr(classes, "__len__"):
                continue
            flags = table[self.only].iat[i] if self.only else None
            for k, (cls, hit) in enumerate(zip(classes, hits, strict=True)):
                if hit is None or hit < 0 or (flags is not None and not flags[k]):
                    continue
                rows.append((i, int(cls), float(hit)))
        universe = sorted({cls for _, cls, _ in rows})
        column = {cls: j for j, cls in enumerate(universe)}
        out = np.zeros((len(table), 2 * len(universe)))
        for i, cls, hit in rows:
            out[i, column[cls]] += hit
            out[i, len(universe) + column[cls]] += 1.0
        return out

    def value(self, sums: np.ndarray) -> np.ndarray:
        k = sums.shape[-1] // 2
        hits, total = sums[..., :k], sums[..., k:]
        seen = total > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.where(seen, hits / np.where(seen, total, 1.0), 0.0)
            return accuracy.sum(-1) / seen.sum(-1)


@dataclass(frozen=True)
class BestThreshold(Aggregation):
    """MaxBoxAcc: ``max_t hits[d, t] / pairs`` for each IoU criterion ``d`` in ``deltas`` (mean over them;
    one index for MaxBoxAcc, several for V2), or read at ``fixed`` instead of maximized.

    ``hits`` is a list column of ``n_deltas * n_thresholds`` per-image hit counts (criterion-major),
    ``pairs`` the image's number of (image, class) pairs.
    """

    hits: str
    pairs: str
    n_deltas: int
    deltas: tuple[int, ...]
    fixed: int | None = None

    def contributions(self, table: pd.DataFrame) -> np.ndarray | None:
        if self.hits not in table.columns or self.pairs not in table.columns:
            return None
        width = None
        rows = []
        for cell in table[self.hits]:
            row = np.asarray(cell, dtype=np.float64) if hasattr(cell, "__len__") else None
            width = width or (len(row) if row is not None else None)
            rows.append(row)
        if width is None or width % self.n_deltas:
            return None
        hits = np.stack([r if r is not None else np.zeros(width) for r in rows])
        pairs = np.nan_to_num(_numeric(table[self.pairs], None))
        return np.concatenate([hits, pairs[:, None]], axis=1)

    def value(self, sums: np.ndarray) -> np.ndarray:
        pairs = sums[..., -1]
        curves = sums[..., :-1].reshape(*sums.shape[:-1], self.n_deltas, -1)
        picked = curves[..., list(self.deltas), :]
        read = picked.max(-1) if self.fixed is None else picked[..., self.fixed]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, read.mean(-1) / pairs, np.nan)
