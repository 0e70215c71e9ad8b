"""The sort-based Gini and ROC-AUC of :mod:`evalcam.metrics.mask_scores` against brute-force definitions
(every pixel pair compared), on maps with many ties, negative values and both dtypes; the batched
rank-sum AUC and the torch Gini (the GPU paths, run here on the CPU) against the CPU paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evalcam.metrics import mask_scores as ms


def _brute_auc(a: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney U over all (mask, background) pairs, ties one half, over the number of pairs."""
    inside, background = a[s], a[~s]
    diff = inside[:, None] - background[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _brute_gini(a: np.ndarray) -> float:
    """Gini as half the relative mean absolute difference: sum |x_i - x_j| / (2 n sum x), x = |a|."""
    x = np.abs(a.astype(np.float64)).ravel()
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size * x.sum()))


def _maps(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Six 24 x 20 CAM-like maps (seeded 5 x 5 noise upsampled) with ties from several sources: ReLU
    zeros, coarse rounding (few distinct values), the replicated borders of bilinear upsampling; masks of
    different sizes (one pixel to most of the image)."""
    gen = torch.Generator().manual_seed(3)
    coarse = torch.rand(6, 1, 5, 5, generator=gen) - 0.4
    maps = F.interpolate(coarse, size=(24, 20), mode="bilinear", align_corners=False)[:, 0]
    maps[1] = maps[1].clamp_min(0)  # a block of tied zeros
    maps[2] = (maps[2] * 4).round() / 4  # a handful of distinct values
    maps[3] = (maps[3] > 0).float()  # two values
    masks = (
        torch.rand(6, 24, 20, generator=gen) < torch.tensor([0.3, 0.5, 0.2, 0.6, 0.9, 0.05])[:, None, None]
    )
    masks[5] = False
    masks[5, 7, 3] = True  # a one-pixel mask
    masks[:, 0, 0] = True  # every row has a mask pixel ...
    masks[:, -1, -1] = False  # ... and a background pixel
    return maps.to(dtype), masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roc_auc_equals_the_pairwise_count_with_ties(dtype):
    maps, masks = _maps(dtype)
    expected = [_brute_auc(a.numpy(), s.numpy()) for a, s in zip(maps, masks, strict=True)]
    assert len({round(e, 6) for e in expected}) == len(expected)  # six different answers
    assert ms.roc_auc(maps, masks).tolist() == pytest.approx(expected, abs=1e-12)
    # 2U is an exact integer: the batched rank-sum form gives the very same floats
    assert ms._roc_auc_ranks(maps, masks).tolist() == ms.roc_auc(maps, masks).tolist()
    # a map that orders the mask perfectly above, or below, the background
    perfect = masks.to(dtype) + 0.01 * maps
    assert ms.roc_auc(perfect, masks).tolist() == [1.0] * 6
    assert ms.roc_auc(-perfect, masks).tolist() == [0.0] * 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gini_equals_the_mean_absolute_difference_form(dtype):
    maps, _ = _maps(dtype)
    expected = [_brute_gini(a.numpy()) for a in maps]
    assert ms.gini(maps).tolist() == pytest.approx(expected, abs=1e-12)
    assert ms._gini_torch(maps.reshape(6, -1)).tolist() == pytest.approx(expected, abs=1e-12)
    one_pixel = torch.zeros(1, 16)
    one_pixel[0, 5] = -2.0
    assert ms.gini(one_pixel).item() == pytest.approx(1 - 1 / 16)
