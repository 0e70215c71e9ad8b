"""Rank and linear correlation of maps, row by row, with the degenerate-map rule every metric shares.

:func:`spearman` follows ``scipy.stats.spearmanr``: Pearson correlation of the ranks, ties sharing the
mean of the ranks they span (``scipy.stats.rankdata(method="average")``). Computations run in float64.

Correlation is undefined when either row is constant or holds NaN/Inf. The rule used by the faithfulness,
robustness and sanity metrics is: such a pair is scored **0** (the map carries no ranking, so it shares
none with the reference) and reported as invalid so the metric counts it in ``degenerate_maps``. Scoring
instead of dropping keeps every method evaluated on the same images.

:func:`flat_maps` is the test every metric applies to a map *as the method returned it*: resampling a
constant map to image size is not exactly constant in float32 (bilinear weights leave ~1e-7 ripples), so
deciding after resampling would rank, threshold or argmax rounding noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..n`` along the last dimension; tied values get the mean of their ranks (float64)."""
    values = values.double()
    ordered, order = values.sort(dim=-1, stable=True)
    n = values.shape[-1]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    group = starts.long().cumsum(-1) - 1  # tie-group index of every sorted position
    position = torch.arange(1, n + 1, dtype=torch.float64, device=values.device).expand_as(ordered)
    total = torch.zeros_like(ordered).scatter_add_(-1, group, position)
    count = torch.zeros_like(ordered).scatter_add_(-1, group, torch.ones_like(position))
    sorted_ranks = (total / count.clamp_min(1)).gather(-1, group)
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)


def flat_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per ``[h, w]`` map of ``[..., h, w]``: True when it holds NaN/Inf or is constant (bool ``[...]``)."""
    flat = maps.detach().flatten(-2)
    return ~torch.isfinite(flat).all(-1) | ~(flat.amax(-1) > flat.amin(-1))


def _valid_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    varies_a = a.amax(-1) > a.amin(-1)
    varies_b = b.amax(-1) > b.amin(-1)
    return finite & varies_a & varies_b


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(torch.finfo(torch.float64).tiny)
    return ((a * b).sum(-1) / den).clamp(-1.0, 1.0)


def _correlate(
    a: torch.Tensor, b: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of ``transform`` of each valid row pair; invalid rows hold 0."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    valid = _valid_rows(a, b)
    r = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    if bool(valid.any()):
        r[valid] = _pearson_rows(transform(a[valid]), transform(b[valid]))
    return r, valid


def pearson(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of each row pair of ``[N, n]`` (or ``[N, h, w]``) tensors.

    Returns ``(r [N] float64, valid [N] bool)``; invalid rows (constant or non-finite) hold 0.
    """
    return _correlate(a, b, lambda rows: rows)


def spearman(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spearman rank correlation of each row pair (``scipy.stats.spearmanr`` semantics, average ties).

    Returns ``(rho [N] float64, valid [N] bool)``; invalid rows (constant or non-finite) hold 0.
    """
    return _correlate(a, b, average_ranks)
