"""Scores of maps against ground-truth masks and of map complexity: pure, batched tensor functions.

Every function takes maps ``a`` of shape ``[N, ...]`` (flattened to ``[N, n]``) and, for the mask scores,
bool masks ``s`` of the same shape, and returns one float64 score per row, on the input's device. They are
shared by the accumulators of :mod:`evalcam.metrics.mask_localization`, :mod:`evalcam.metrics.complexity`,
:mod:`evalcam.metrics.focus` and by :func:`evalcam.metrics.pointing.energy_in_region`.

Rows must be valid (finite, non-constant, with some positive value where the score reads positive
relevance); the accumulators decide degeneracy with :func:`degenerate_rows` before calling them.
Papers and the Quantus 0.6 functions they are checked against are named per function.
"""

from __future__ import annotations

import numpy as np
import torch


def _rows(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1).double()


def degenerate_rows(a: torch.Tensor) -> torch.Tensor:
    """Per row: non-finite values, constant, or no positive value (the map singles out nothing)."""
    flat = a.detach().reshape(a.shape[0], -1)
    finite = torch.isfinite(flat).all(-1)
    safe = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    varies = safe.amax(-1) > safe.amin(-1)
    positive = safe.amax(-1) > 0
    return ~(finite & varies & positive)


# --- complexity ---------------------------------------------------------------------------------------


def gini(a: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|a|`` per row (Chalasani et al., ICML 2020, "sparseness"; Hurley & Rickard
    2009): ``sum_k (2k - n - 1) |a|_(k) / (n sum |a|)`` over ascending order statistics. 0 for a uniform
    map, ``1 - 1/n`` for a single non-zero pixel. Quantus ``Sparseness`` adds 1e-7 to every value first,
    which moves the result by < 1e-6 on max-normalised maps.

    One sort of the whole ``[N, n]`` batch (in the map's dtype) is the whole cost; the weighted sum is one
    float64 matrix-vector product. On the CPU the sort goes through NumPy, ~2.7x faster than
    ``torch.sort`` there."""
    flat = a.detach().reshape(a.shape[0], -1)
    if flat.device.type != "cpu":
        return _gini_torch(flat)
    n = flat.shape[-1]
    x = np.abs(flat.numpy())  # a new array: sorted in place, no second copy
    x.sort(axis=-1)
    x = x.astype(np.float64, copy=False)
    weights = np.arange(1 - n, n, 2, dtype=np.float64)  # 2k - n - 1 for k = 1 .. n
    return torch.from_numpy((x @ weights) / (n * x.sum(-1)))


def _gini_torch(flat: torch.Tensor) -> torch.Tensor:
    """:func:`gini` of ``[N, n]`` rows with ``torch.sort`` (GPU path; same formula)."""
    n = flat.shape[-1]
    x = flat.abs().sort(dim=-1).values.double()
    weights = torch.arange(1 - n, n, 2, dtype=torch.float64, device=x.device)
    return (x @ weights) / (n * x.sum(-1))


def entropy(a: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the fractional contributions ``|a| / sum |a|`` per row (Bhatt et al.,
    IJCAI 2020, "complexity"); ``0 log 0 = 0``. ``log n`` for a uniform map."""
    x = _rows(a).abs()
    p = x / x.sum(-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(-1)


def effective_count(a: torch.Tensor, eps: float) -> torch.Tensor:
    """Number of features with ``|a| / max|a| > eps`` per row (Nguyen & Martinez 2020, "effective
    complexity"), the maximum taken per map. Quantus 0.6 normalises by the maximum of the whole batch, so
    its count of an image depends on the other images (equal one image at a time)."""
    x = _rows(a).abs()
    return (x / x.amax(-1, keepdim=True) > eps).sum(-1).double()


# --- localisation against masks -------------------------------------------------------------------------


def relevance_mass(a: torch.Tensor, s: torch.Tensor, positive: bool = True) -> torch.Tensor:
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022): relevance inside the mask
    over the total relevance. ``positive``: only positive relevance counts, as in the paper; Quantus
    ``RelevanceMassAccuracy`` (abs=False) sums signed values, which differs once a map has negatives."""
    x = _rows(a)
    if positive:
        x = x.clamp_min(0)
    return (x * _rows(s)).sum(-1) / x.sum(-1)


def top_hits(a: torch.Tensor, s: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, how many of its ``k[row]`` most relevant pixels lie in the mask; among pixels tied at the
    threshold the first in raster order are taken (Quantus's unstable ``argsort`` leaves that open).

    Selection, not sorting: the ``k``-th largest value ``v`` (``kthvalue``), every pixel above ``v``, then
    the first ``k - #above`` pixels equal to ``v``; linear in the pixels."""
    x = a.reshape(a.shape[0], -1)
    m = s.reshape(s.shape[0], -1).bool()
    n = x.shape[-1]
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(x.shape[0]):  # k differs per row (relevance rank: the row's mask size)
        kk = int(k[i])
        if kk <= 0:
            continue
        v = x[i].kthvalue(n - kk + 1).values
        above = x[i] > v
        tied = x[i] == v
        take = tied & (tied.cumsum(0) <= kk - int(above.sum()))
        out[i] = float((m[i] & (above | take)).sum())
    return out


def relevance_rank(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Relevance rank accuracy (Arras et al. 2022): with ``K = |mask|``, the fraction of the ``K``
    most relevant pixels that lie in the mask."""
    size = s.reshape(s.shape[0], -1).sum(-1)
    return top_hits(a, s, size) / size.double()


def topk_intersection(
    a: torch.Tensor, s: torch.Tensor, k: int, concept_influence: bool = False
) -> torch.Tensor:
    """Top-k intersection (Theiner et al., WACV 2022): fraction of the ``k`` most relevant pixels in the
    mask; ``concept_influence`` divides by the mask's share of the image (Quantus's option)."""
    hits = top_hits(a, s, torch.full((a.shape[0],), int(k))) / k
    if concept_influence:
        hits = hits * s.reshape(s.shape[0], -1).shape[-1] / s.reshape(s.shape[0], -1).sum(-1).double()
    return hits


def attribution_localisation(a: torch.Tensor, s: torch.Tensor, weighted: bool = False) -> torch.Tensor:
    """Attribution localisation (Kohlbrenner et al., IJCNN 2020): ``mu = R_in / R_tot`` of the
    positive relevance; ``weighted``: ``mu * S_tot / S_in`` (mask size relative to the image), which
    rewards small objects. Quantus 0.6 multiplies by ``S_in / size(x_batch[2:])`` instead (inverted and
    over the wrong axes); evalcam follows the paper."""
    mu = relevance_mass(a, s, positive=True)
    if weighted:
        sizes = s.reshape(s.shape[0], -1)
        mu = mu * sizes.shape[-1] / sizes.sum(-1).double()
    return mu


def roc_auc(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of the map as a pixel classifier of the mask (Fawcett 2006; what Quantus
    ``AUC`` computes with ``sklearn.metrics.roc_curve`` + ``auc``). The trapezoidal area of the ROC curve
    with one point per distinct value equals the Mann-Whitney statistic with ties counted one half:
    ``U = #(a_mask > a_background) + #(a_mask == a_background) / 2`` over all (mask, background) pixel
    pairs, divided by their number. Rows need both mask and background pixels.

    ``2U`` is an exact integer, so the result does not depend on how it is counted: on the CPU per row by
    binary search of the sorted mask values in the sorted background values (the two sorts together cost
    one sort of the row; the second search, for ties, only runs on the mask values that have a tie); on
    other devices batched over all rows by the rank-sum form (:func:`_roc_auc_ranks`)."""
    if a.device.type != "cpu":
        return _roc_auc_ranks(a, s)
    x = a.detach().reshape(a.shape[0], -1).numpy()
    m = s.reshape(s.shape[0], -1).bool().numpy()
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):  # mask sizes differ per row
        background, inside = x[i][~m[i]], x[i][m[i]]  # copies: sorted in place
        background.sort()
        inside.sort()  # sorted queries keep the binary searches cache-friendly
        below = np.searchsorted(background, inside, side="left")
        tied = background[np.minimum(below, background.size - 1)] == inside
        twice_u = 2 * int(below.sum())
        if tied.any():
            twice_u += int((np.searchsorted(background, inside[tied], side="right") - below[tied]).sum())
        out[i] = twice_u / (2 * inside.size * background.size)
    return torch.from_numpy(out)


def _roc_auc_ranks(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """:func:`roc_auc` batched without a per-row loop (what a GPU wants): one sort of all values per row,
    the mid-rank of every pixel from two binary searches in it, and ``2U = 2 R_mask - m (m + 1)`` with
    ``R_mask`` the mask's rank sum (ties get mid-ranks), in exact integers."""
    x = a.detach().reshape(a.shape[0], -1)
    m = s.reshape(s.shape[0], -1).bool()
    ordered = x.sort(dim=-1).values
    left = torch.searchsorted(ordered, x, right=False)
    right = torch.searchsorted(ordered, x, right=True)
    twice_rank_sum = ((left + right + 1) * m).sum(-1)  # 2 x (1-based mid-rank) summed over the mask
    inside = m.sum(-1)
    background = m.shape[-1] - inside
    twice_u = twice_rank_sum - inside * (inside + 1)
    return twice_u.double() / (2 * inside * background).double()


def quadrant_share(a: torch.Tensor, quadrants: torch.Tensor) -> torch.Tensor:
    """Focus (Arias-Duart et al., 2022): share of the positive relevance of ``[N, H, W]`` mosaic maps in
    the quadrants flagged by ``quadrants`` ``[N, 4]`` (top-left, top-right, bottom-left, bottom-right).
    Quadrant borders at ``H // 2`` and ``W // 2`` (as Quantus ``Focus``)."""
    x = a.double().clamp_min(0)
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    parts = torch.stack(
        [
            x[:, :h, :w].sum((-2, -1)),
            x[:, :h, w:].sum((-2, -1)),
            x[:, h:, :w].sum((-2, -1)),
            x[:, h:, w:].sum((-2, -1)),
        ],
        -1,
    )
    return (parts * quadrants.double()).sum(-1) / x.sum((-2, -1))
