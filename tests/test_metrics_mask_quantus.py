"""Parity of the complexity, mask-localisation and Focus scores with Quantus 0.6 on identical maps and
masks (real COCO val2017 masks; smooth CAM-like maps at image size), and the pinned differences where
evalcam follows the paper and Quantus does not.

Tolerances: 1e-9 where both sides compute the same float64 formula; 1e-6 for Sparseness (Quantus adds
1e-7 to every value of the max-normalised map) and Complexity (Quantus's log(p + 1e-12)).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_subdir

from evalcam.metrics import mask_scores as ms

quantus = pytest.importorskip("quantus")
if not hasattr(np, "trapz"):  # quantus 0.6 calls np.trapz, removed in NumPy 2.4
    np.trapz = np.trapezoid  # type: ignore[attr-defined]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def coco_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Up to 6 (map, mask) pairs on real COCO masks, all resized to 96 x 128 (Quantus needs one shape):
    maps are seeded 7 x 7 noise upsampled bilinearly plus a bump on the object, like a CAM."""
    from evalcam.data import build_dataset

    dataset = build_dataset("coco2017", root=shared_subdir("coco_val2017_mini"), limit=6)
    gen = torch.Generator().manual_seed(0)
    maps, masks = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        cls = sample.labels[0]
        mask = F.interpolate(sample.masks[cls][None, None].float(), size=(96, 128), mode="nearest")[0, 0] > 0
        if not mask.any() or mask.all():
            continue
        coarse = torch.rand(1, 1, 7, 7, generator=gen)
        cam = F.interpolate(coarse, size=(96, 128), mode="bilinear", align_corners=False)[0, 0]
        cam = cam + 0.5 * mask.float() + 1e-4 * torch.rand(96, 128, generator=gen)  # no ties
        maps.append(cam - 0.3)  # some negative relevance
        masks.append(mask)
    assert len(maps) >= 4
    return torch.stack(maps).double(), torch.stack(masks)


def _quantus(metric, maps: torch.Tensor, masks: torch.Tensor | None = None, **call) -> np.ndarray:
    n = maps.shape[0]
    x = np.zeros((n, 1, *maps.shape[-2:]), dtype=np.float32)
    s = None if masks is None else masks.numpy()[:, None].astype(float)
    out = metric(
        model=call.pop("model", None),
        x_batch=x,
        y_batch=np.zeros(n, dtype=int),
        a_batch=maps.numpy()[:, None].copy(),
        s_batch=s,
        **call,
    )
    return np.asarray(out, dtype=np.float64)


def test_complexity_family_matches_quantus(coco_pairs):
    maps, _ = coco_pairs
    q = dict(disable_warnings=True)
    np.testing.assert_allclose(ms.gini(maps).numpy(), _quantus(quantus.Sparseness(**q), maps), atol=1e-6)
    np.testing.assert_allclose(ms.entropy(maps).numpy(), _quantus(quantus.Complexity(**q), maps), atol=1e-6)
    for eps in (1e-5, 0.3, 0.7):  # thresholds that cut the maps at different places
        ours = ms.effective_count(maps, eps).numpy()
        # Quantus's normalise_by_max divides by the maximum of the whole batch: one image at a time it is
        # the image's own maximum, evalcam's definition (independent of what else is in the batch).
        one_by_one = [_quantus(quantus.EffectiveComplexity(eps=eps, **q), m[None])[0] for m in maps]
        np.testing.assert_array_equal(ours, one_by_one)
    assert len(set(ms.effective_count(maps, 0.7).tolist())) > 1  # the thresholds really discriminate


def test_pinned_quantus_effective_complexity_uses_the_batch_maximum(coco_pairs):
    maps, _ = coco_pairs
    batched = _quantus(quantus.EffectiveComplexity(eps=0.3, disable_warnings=True), maps)
    flat = maps.abs().reshape(maps.shape[0], -1)
    np.testing.assert_array_equal(batched, (flat / flat.max() > 0.3).sum(-1).numpy())
    assert (batched != ms.effective_count(maps, 0.3).numpy()).any()


def test_mask_scores_match_quantus_where_it_follows_the_paper(coco_pairs):
    maps, masks = coco_pairs
    q = dict(disable_warnings=True)
    positive = maps.clamp_min(0)
    # Relevance mass on non-negative maps (with negatives Quantus sums signed relevance, see below).
    np.testing.assert_allclose(
        ms.relevance_mass(positive, masks).numpy(),
        _quantus(quantus.RelevanceMassAccuracy(**q), positive, masks),
        atol=1e-9,
    )
    np.testing.assert_allclose(
        ms.relevance_rank(maps, masks).numpy(),
        _quantus(quantus.RelevanceRankAccuracy(**q), maps, masks),
        atol=1e-9,
    )
    for k in (50, 1000):
        np.testing.assert_allclose(
            ms.topk_intersection(maps, masks, k).numpy(),
            _quantus(quantus.TopKIntersection(k=k, **q), maps, masks),
            atol=1e-9,
        )
    np.testing.assert_allclose(
        ms.topk_intersection(maps, masks, 1000, concept_influence=True).numpy(),
        _quantus(quantus.TopKIntersection(k=1000, concept_influence=True, **q), maps, masks),
        atol=1e-9,
    )
    np.testing.assert_allclose(
        ms.attribution_localisation(maps, masks).numpy(),
        _quantus(quantus.AttributionLocalisation(abs=False, positive_attributions=True, **q), maps, masks),
        atol=1e-9,
    )
    # AUC also on maps with many ties (ReLU zeros): both count tied pixels as one ROC step.
    for m in (maps, positive):
        np.testing.assert_allclose(
            ms.roc_auc(m, masks).numpy(), _quantus(quantus.AUC(**q), m, masks), atol=1e-9
        )
    assert (positive == 0).sum() > 1000


def test_pinned_differences_from_quantus(coco_pairs):
    maps, masks = coco_pairs
    q = dict(disable_warnings=True)
    # Relevance mass: Arras et al. count positive relevance; Quantus (abs=False) sums signed values.
    signed = _quantus(quantus.RelevanceMassAccuracy(**q), maps, masks)
    np.testing.assert_allclose(ms.relevance_mass(maps, masks, positive=False).numpy(), signed, atol=1e-9)
    assert np.abs(ms.relevance_mass(maps, masks).numpy() - signed).min() > 1e-3
    # Weighted attribution localisation: the paper multiplies by S_tot / S_in; Quantus 0.6 by
    # S_in / x_batch[2:].size (batch rows from the third on, not the image), here with n rows of 1 x H x W.
    n, h, w = maps.shape
    ours = ms.attribution_localisation(maps, masks, weighted=True).numpy()
    theirs = _quantus(
        quantus.AttributionLocalisation(abs=False, positive_attributions=True, weighted=True, **q),
        maps,
        masks,
    )
    mu = ms.attribution_localisation(maps, masks).numpy()
    inside = masks.reshape(n, -1).sum(-1).numpy()
    np.testing.assert_allclose(ours, mu * h * w / inside, atol=1e-9)
    np.testing.assert_allclose(theirs, mu * inside / ((n - 2) * h * w), atol=1e-9)
    # Quantus's default AttributionLocalisation takes |a| (abs=True): negative relevance counts as positive.
    default = _quantus(quantus.AttributionLocalisation(**q), maps, masks)
    np.testing.assert_allclose(default, ms.relevance_mass(maps.abs(), masks).numpy(), atol=1e-9)


def test_rank_ties_go_to_raster_order():
    """Quantus ranks with numpy's unstable argsort, so its top-k among tied values is unspecified; evalcam
    takes tied pixels in raster order (first row first), which makes a tied map's score reproducible."""
    cam = torch.zeros(1, 4, 4, dtype=torch.float64)
    cam[0, :2] = 1.0  # 8 tied maxima in the first two rows
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0] = True  # first row only
    assert ms.topk_intersection(cam, mask, 4).item() == 1.0  # the 4 first tied pixels are row 0
    assert ms.relevance_rank(cam, mask).item() == 1.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1] = True
    assert ms.topk_intersection(cam, mask, 4).item() == 0.0


class _Constant(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2)


def test_focus_quadrant_share_matches_quantus(coco_pairs):
    maps, _ = coco_pairs
    n = maps.shape[0]
    flags = torch.tensor(
        [[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]]
    )[:n]
    x = np.zeros((n, 3, *maps.shape[-2:]), dtype=np.float32)
    theirs = quantus.Focus(disable_warnings=True)(
        model=_Constant(),
        x_batch=x,
        y_batch=np.zeros(n, dtype=int),
        a_batch=maps.numpy()[:, None].repeat(3, 1).copy(),
        custom_batch=[tuple(f) for f in flags.tolist()],
    )
    ours = ms.quadrant_share(maps, flags).numpy()
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-7)
    assert np.ptp(ours) > 0.01


def test_bench_rows_time_every_metric_against_its_quantus_peer():
    from evalcam.bench.mask_metrics import PAIRS, bench_rows, format_rows

    rows = bench_rows(batch=2, size=32, repeats=1)
    assert [r["metric"] for r in rows] == list(PAIRS)
    assert all(
        r["evalcam_s"] > 0 and r["peer_s"] > 0 and r["ratio"] == r["peer_s"] / r["evalcam_s"] for r in rows
    )
    assert format_rows(rows)[0].startswith("sparseness                 vs quantus.Sparseness")
