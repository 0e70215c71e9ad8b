"""The faithfulness family (issue 18) on toy models with closed-form answers: pixel flipping, region
perturbation, faithfulness correlation/estimate, monotonicity correlation, infidelity, IROF, sufficiency,
and ROAD against a transcription of its authors' reference code; bad input and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ConvToy, LinearToy, make_batch
from scipy.sparse import csc_matrix, lil_matrix
from scipy.sparse.linalg import spsolve
from scipy.spatial.distance import cdist

from evalcam.metrics import build_metrics
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithfulness_correlation import FaithfulnessCorrelation
from evalcam.metrics.faithfulness_estimate import FaithfulnessEstimate
from evalcam.metrics.imputation import patch_groups, pixel_groups
from evalcam.metrics.infidelity import Infidelity
from evalcam.metrics.irof import IROF
from evalcam.metrics.monotonicity_correlation import MonotonicityCorrelation
from evalcam.metrics.pixel_flipping import PixelFlipping
from evalcam.metrics.region_perturbation import RegionPerturbation
from evalcam.metrics.road import ROAD, dissection_order, noisy_linear_imputation
from evalcam.metrics.sufficiency import Sufficiency

FAMILY = (
    "road",
    "irof",
    "pixel_flipping",
    "region_perturbation",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "monotonicity_correlation",
    "sufficiency",
    "infidelity",
)


def linear_case(n: int = 2, size: int = 8, seed: int = 0):
    """A linear model whose weights are equal over channels, positive inputs, and the exact per-pixel
    contribution of class 0 (the map every faithfulness metric should rate perfect)."""
    generator = torch.Generator().manual_seed(seed)
    per_pixel = torch.rand(2, 1, size, size, generator=generator) + 0.1
    model = LinearToy(per_pixel.expand(2, 3, size, size).contiguous())
    inputs = torch.rand(n, 3, size, size, generator=generator) + 0.1
    contribution = inputs.sum(1) * per_pixel[0, 0]
    return model, inputs, contribution


# --- shared helper -----------------------------------------------------------------------------------


def test_pixel_and_patch_groups_follow_the_saliency_order():
    cams = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]]).double()
    assert pixel_groups(cams, 4).tolist() == [[[0, 3], [1, 2]]]
    assert pixel_groups(cams, 2).tolist() == [[[0, 1], [0, 1]]]
    assert pixel_groups(cams, 4, descending=False).tolist() == [[[3, 0], [2, 1]]]
    cams = torch.zeros(1, 4, 4).double()
    cams[0, 2:, :2] = 1.0  # bottom-left patch most salient, then raster order
    groups, count = patch_groups(cams, 2)
    assert count == 4
    assert groups[0, ::2, ::2].tolist() == [[1, 2], [0, 3]]


def test_an_unknown_baseline_is_refused_with_the_names_that_work():
    model, inputs, contribution = linear_case()
    batch = make_batch(model, inputs, [0, 0], contribution)
    with pytest.raises(ValueError) as err:
        PixelFlipping(steps=16, baseline="gray").update(batch)
    assert str(err.value) == (
        "unknown baseline 'gray'; use one of mean, zero, black, image_mean, blur, uniform "
        "or a grey level in [0, 1]"
    )
    grey, black = PixelFlipping(steps=16, baseline="0.0"), PixelFlipping(steps=16, baseline="black")
    assert torch.equal(grey.curves(batch)[0], black.curves(batch)[0])  # pixel value 0 either way


# --- curves with closed forms --------------------------------------------------------------------------


def test_pixel_flipping_curve_is_the_cumulative_removed_contribution():
    model, inputs, contribution = linear_case()
    metric = PixelFlipping(steps=16, score="logit")
    batch = make_batch(model, inputs, [0, 0], contribution)
    curve, degenerate = metric.curves(batch)
    ordered = contribution.flatten(1).sort(1, descending=True).values.double()
    removed = ordered.view(2, 16, 4).sum(-1).cumsum(1)
    clean = contribution.flatten(1).sum(1).double()
    expected = torch.cat([clean[:, None], clean[:, None] - removed], 1)
    assert torch.allclose(curve, expected, atol=1e-4)
    assert not degenerate.any()
    records = metric.update(batch)
    aopc = (expected[:, :1] - expected).mean(1)
    assert [r["pixel_flipping.aopc"] for r in records] == pytest.approx(aopc.tolist(), abs=1e-4)
    auc = (expected.sum(1) - expected[:, 0] / 2 - expected[:, -1] / 2) / 16
    assert metric.compute()["auc"] == pytest.approx(float(auc.mean()), abs=1e-4)
    # LeRF removes the least relevant first: its early drops are smaller
    lerf, _ = PixelFlipping(steps=16, score="logit", order="lerf").curves(batch)
    assert bool((lerf[:, 1:-1] > curve[:, 1:-1]).all())


def test_region_perturbation_aopc_is_the_papers_mean_over_l_plus_one_points():
    model, inputs, contribution = linear_case()
    metric = RegionPerturbation(patch_size=2, regions=5, baseline="mean", score="logit")
    batch = make_batch(model, inputs, [0, 0], contribution)
    curve, _ = metric.curves(batch)
    patches = contribution.view(2, 4, 2, 4, 2).sum((2, 4)).flatten(1).double()
    top = patches.sort(1, descending=True).values[:, :5].cumsum(1)
    assert torch.allclose(curve[:, 0] - curve[:, 1:].T, top.T, atol=1e-4)
    records = metric.update(batch)
    paper = torch.cat([torch.zeros(2, 1, dtype=torch.float64), top], 1).mean(1)
    assert [r["region_perturbation.aopc"] for r in records] == pytest.approx(paper.tolist(), abs=1e-4)
    assert records[0]["region_perturbation.final_drop"] == pytest.approx(float(top[0, -1]), abs=1e-4)


@pytest.mark.parametrize(
    "metric,key",
    [
        (FaithfulnessEstimate(steps=16, score="logit"), "pearson"),
        (FaithfulnessCorrelation(runs=12, subset_size=5, score="logit"), "pearson"),
        (MonotonicityCorrelation(steps=8, samples=1, baseline="mean", score="logit"), "spearman"),
    ],
)
def test_correlation_metrics_are_one_for_the_exact_contribution_map(metric, key):
    model, inputs, contribution = linear_case()
    records = metric.update(make_batch(model, inputs, [0, 0], contribution))
    assert [r[f"{metric.name}.{key}"] for r in records] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert metric.compute()["degenerate_maps"] == 0


def test_faithfulness_estimate_is_minus_one_for_the_reversed_map():
    model, inputs, contribution = linear_case()
    reversed_map = contribution.amax() + 1 - contribution
    metric = FaithfulnessEstimate(steps=16, score="logit")
    records = metric.update(make_batch(model, inputs, [0, 0], reversed_map))
    assert [r["faithfulness_estimate.pearson"] for r in records] == pytest.approx([-1.0, -1.0], abs=1e-6)


def test_infidelity_is_zero_for_the_exact_weights_and_positive_otherwise():
    model, inputs, _ = linear_case()
    weights = model.weights[0, 0].expand(2, -1, -1)
    exact = Infidelity(patch_size=2, stride=2, scaled=False, incremental=False)
    exact.update(make_batch(model, inputs, [0, 0], weights))
    assert exact.compute()["infidelity"] == pytest.approx(0.0, abs=1e-8)
    # scaling makes the unit irrelevant: 5x the weights is just as faithful
    scaled = Infidelity(patch_size=2, stride=2, incremental=False)
    scaled.update(make_batch(model, inputs, [0, 0], 5 * weights))
    assert scaled.compute()["infidelity"] == pytest.approx(0.0, abs=1e-8)
    wrong = Infidelity(patch_size=2, stride=2, incremental=False)
    wrong.update(make_batch(model, inputs, [0, 0], weights.flip(-1)))
    assert wrong.compute()["infidelity"] > 1e-3


def test_infidelity_incremental_equals_full_forwards():
    model = ConvToy(gaussian_scale=0.5)
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(2))
    batch = make_batch(model, inputs, [1, 3], maps)
    full = Infidelity(patch_size=4, stride=4, incremental=False).update(batch)
    fast = Infidelity(patch_size=4, stride=4, incremental=True).update(batch)
    for a, b in zip(full, fast, strict=True):
        assert a["infidelity.infidelity"] == pytest.approx(b["infidelity.infidelity"], rel=1e-4, abs=1e-9)


def test_irof_ranks_the_exact_map_above_its_reverse():
    model, inputs, contribution = linear_case(size=32)
    batch = make_batch(model, inputs, [0, 0], contribution)
    good = IROF(n_segments=100, score="logit")
    curves, _ = good.curves(batch)
    assert all(float(c[0]) == 1.0 and len(c) >= 3 for c in curves)
    good.update(batch)
    bad = IROF(n_segments=100, score="logit")
    bad.update(make_batch(model, inputs, [0, 0], contribution.amax() + 1 - contribution))
    assert good.compute()["aoc"] > bad.compute()["aoc"]


def test_sufficiency_counts_close_maps_with_the_same_prediction():
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(2, 6, 6, generator=generator)
    maps = torch.stack([base[0], base[0] + 0.01 * torch.rand(6, 6, generator=generator), base[1], base[1]])
    maps[3] += 0.01 * torch.rand(6, 6, generator=generator)
    inputs = torch.rand(4, 3, 6, 6, generator=generator)
    model = ConvToy(gaussian_scale=0.5)
    metric = Sufficiency(threshold=0.3)
    records = metric.update(make_batch(model, inputs, [2, 2, 1, 4], maps))
    assert [r["sufficiency.sufficiency"] for r in records] == [1.0, 1.0, 0.0, 0.0]
    # the distances are scipy's seuclidean of |map| / (the batch's max), divided by the largest
    flat = (maps / maps.max()).flatten(1).double().numpy()
    reference = cdist(flat, flat, "seuclidean")
    reference /= reference.max()
    from evalcam.metrics.sufficiency import normalized_distances

    assert np.allclose(normalized_distances(maps).numpy(), reference, atol=1e-9)


# --- ROAD against its authors' reference code ----------------------------------------------------------

REFERENCE_WEIGHTS = [
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
]


def reference_noisy_linear_imputer(img: torch.Tensor, mask: torch.Tensor, noise: float) -> torch.Tensor:
    """Transcription of road/imputations.py ``NoisyLinearImputer.__call__`` (mask: 1 = present)."""

    def add_offset_to_indices(indices, offset, mask_shape):
        cord1 = indices % mask_shape[1]
        cord0 = indices // mask_shape[1]
        cord0 = cord0 + offset[0]
        cord1 = cord1 + offset[1]
        valid = (cord0 < 0) | (cord1 < 0) | (cord0 >= mask_shape[0]) | (cord1 >= mask_shape[1])
        return ~valid, indices + offset[0] * mask_shape[1] + offset[1]

    def setup_sparse_system(mask, img):
        maskflt = mask.flatten()
        imgflat = img.reshape((img.shape[0], -1))
        indices = np.argwhere(maskflt == 0).flatten()
        coords_to_vidx = np.zeros(len(maskflt), dtype=int)
        coords_to_vidx[indices] = np.arange(len(indices))
        num = len(indices)
        a = lil_matrix((num, num))
        b = np.zeros((num, img.shape[0]))
        sum_neighbors = np.ones(num)
        for offset, weight in REFERENCE_WEIGHTS:
            valid, new_coords = add_offset_to_indices(indices, offset, mask.shape)
            valid_coords = new_coords[valid]
            valid_ids = np.argwhere(valid == 1).flatten()
            has_values_coords = valid_coords[maskflt[valid_coords] > 0.5]
            has_values_ids = valid_ids[maskflt[valid_coords] > 0.5]
            b[has_values_ids, :] -= weight * imgflat[:, has_values_coords].T
            has_no_values = valid_coords[maskflt[valid_coords] < 0.5]
            variable_ids = coords_to_vidx[has_no_values]
            has_no_values_ids = valid_ids[maskflt[valid_coords] < 0.5]
            a[has_no_values_ids, variable_ids] = weight
            sum_neighbors[np.argwhere(valid == 0).flatten()] -= weight
        a[np.arange(num), np.arange(num)] = -sum_neighbors
        return a, b

    imgflt = img.reshape(img.shape[0], -1)
    indices_linear = np.argwhere(mask.reshape(-1).numpy() == 0).flatten()
    a, b = setup_sparse_system(mask.numpy(), img.numpy())
    res = torch.tensor(spsolve(csc_matrix(a), b), dtype=torch.float)
    img_infill = imgflt.clone()
    img_infill[:, indices_linear] = res.t() + noise * torch.randn_like(res.t())
    return img_infill.reshape_as(img)


def reference_bitmask(explanation: np.ndarray, th_p: float, remove: bool) -> torch.Tensor:
    """Transcription of road/imputed_dataset.py ``ImputedDataset.__getitem__``'s mask (no tie noise)."""
    mask_copy = explanation - explanation.min()
    mask_copy = mask_copy / (explanation.max() - explanation.min() + 1e-5)
    mask_copy = torch.tensor(mask_copy.reshape(-1, 1))
    width, height = explanation.shape
    salient_order = torch.argsort(mask_copy, axis=0, descending=True)
    bitmask = torch.ones(width * height, dtype=torch.uint8)
    if remove:
        coords = salient_order[: int(width * height * th_p)]
    else:
        coords = salient_order[int(width * height * th_p) :]
    bitmask[coords] = 0
    return bitmask.reshape(width, height)


def test_noisy_linear_imputation_equals_the_reference_code():
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(3, 9, 11, generator=generator)
    missing = torch.rand(9, 11, generator=generator) < 0.45
    missing[0, 0] = missing[8, 10] = True  # corners: neighbours outside the image
    torch.manual_seed(11)
    theirs = reference_noisy_linear_imputer(image, (~missing).to(torch.uint8), noise=0.01)
    ours = noisy_linear_imputation(image, missing, 0.01, torch.Generator().manual_seed(11))
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.equal(ours[:, ~missing], image[:, ~missing])
    plain = noisy_linear_imputation(image, missing, 0.0, generator)
    # noiseless: each removed pixel is the weighted mean of its neighbours (interior pixel check)
    y, x = [int(v) for v in torch.nonzero(missing[1:-1, 1:-1])[0] + 1]
    window = plain[:, y - 1 : y + 2, x - 1 : x + 2]
    weights = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    assert torch.allclose((window * weights).sum((1, 2)), plain[:, y, x], atol=1e-5)


@pytest.mark.parametrize("shape", [(37, 52), (64, 9), (1, 40)])
def test_dissection_ordered_imputation_equals_the_reference_code_on_blobs_and_scatter(shape):
    """Several dissection levels (blob masks as ROAD's smooth maps give, and scattered pixels): the
    reordered solve is the reference's system, solved to the same numbers."""
    height, width = shape
    order = dissection_order(height, width)
    assert np.array_equal(np.sort(order), np.arange(height * width))
    generator = torch.Generator().manual_seed(height * width)
    image = torch.rand(3, height, width, generator=generator)
    smooth = torch.nn.functional.interpolate(
        torch.rand(1, 1, 4, 4, generator=generator), size=shape, mode="bilinear", align_corners=False
    )[0, 0]
    cut = smooth.median()
    for missing in (smooth > cut, smooth <= cut, torch.rand(shape, generator=generator) < 0.6):
        assert missing.any() and not missing.all()
        torch.manual_seed(2)
        theirs = reference_noisy_linear_imputer(image, (~missing).to(torch.uint8), noise=0.01)
        ours = noisy_linear_imputation(image, missing, 0.01, torch.Generator().manual_seed(2))
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_road_equals_the_reference_pipeline_on_a_small_image():
    model = ConvToy(gaussian_scale=0.5)
    generator = torch.Generator().manual_seed(5)
    pixels = torch.rand(2, 3, 8, 8, generator=generator)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    inputs = (pixels - mean[:, None, None]) / std[:, None, None]
    maps = torch.randperm(128, generator=generator).view(2, 8, 8).float()  # no ties
    classes = model(inputs).argmax(1)
    batch = make_batch(model, inputs, classes.tolist(), maps, tuple(mean.tolist()), tuple(std.tolist()))
    metric = ROAD(percentages=[25, 60], noise=0.01, seed=3)
    probs, hits, _ = metric.scores(batch)
    from evalcam.metrics.imputation import image_seed

    for i in range(2):
        seed = image_seed(3, f"img{i}")
        for o, remove in enumerate([True, False]):
            for j, p in enumerate([0.25, 0.6]):
                bitmask = reference_bitmask(maps[i].numpy().astype(np.float64), p, remove)
                torch.manual_seed(seed + 7919 * (o * 2 + j))
                imputed = reference_noisy_linear_imputer(pixels[i].clone(), bitmask, 0.01)
                with torch.no_grad():
                    out = model(((imputed - mean[:, None, None]) / std[:, None, None])[None])
                prob = torch.softmax(out, 1)[0, classes[i]]
                assert float(probs[i, o, j]) == pytest.approx(float(prob), abs=1e-5)
                assert float(hits[i, o, j]) == float(out.argmax(1)[0] == classes[i])
    records = metric.update(batch)
    assert records[0]["road.morf_prob"] == pytest.approx(float(probs[0, 0].mean()), abs=1e-9)


# --- bad input and batching ----------------------------------------------------------------------------


def small_settings() -> dict[str, dict]:
    return {
        "road": {"percentages": [30, 70]},
        "irof": {"n_segments": 100, "compactness": 0.1},
        "pixel_flipping": {"steps": 8},
        "region_perturbation": {"patch_size": 4, "regions": 3},
        "faithfulness_correlation": {"runs": 4, "subset_size": 6},
        "faithfulness_estimate": {"steps": 8},
        "monotonicity_correlation": {"steps": 4, "samples": 2},
        "sufficiency": {},
        "infidelity": {"patch_size": 4, "stride": 4, "incremental": False},
    }


def toy_batch(maps: torch.Tensor) -> EvalBatch:
    model = ConvToy(gaussian_scale=0.5)
    inputs = torch.randn(len(maps), 3, 8, 8, generator=torch.Generator().manual_seed(7))
    return make_batch(model, inputs, model(inputs).argmax(1).tolist(), maps)


def test_every_family_metric_has_directions_and_per_image_columns():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = toy_batch(maps)
    for metric in build_metrics(small_settings(), "cpu"):
        records = metric.update(batch)
        logged = metric.compute()
        assert set(metric.higher_is_better) == set(metric.keys)
        for key in metric.keys:
            assert all(np.isfinite(r[f"{metric.name}.{key}"]) for r in records)
            mean = np.mean([r[f"{metric.name}.{key}"] for r in records])
            assert logged[key] == pytest.approx(mean, abs=1e-9), (metric.name, key)


def test_degenerate_maps_are_counted_and_never_nan():
    maps = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(0))
    maps[0] = 0.3  # constant
    maps[1, 0, 0] = float("nan")
    maps[2] = -maps[2] - 0.1  # negative everywhere
    batch = toy_batch(maps)
    for metric in build_metrics(small_settings(), "cpu"):
        metric.update(batch)
        logged = metric.compute()
        assert logged["degenerate_maps"] >= 3, metric.name
        assert all(np.isfinite(v) for v in logged.values()), (metric.name, logged)


def test_a_model_in_training_mode_is_refused_with_one_line():
    batch = toy_batch(torch.rand(2, 4, 4))
    batch.bundle.model.train()
    for metric in build_metrics(small_settings(), "cpu"):
        with pytest.raises(ValueError, match=r"training mode; call model.eval\(\)") as err:
            metric.update(batch)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name,params,key",
    [
        ("pixel_flipping", {"steps": 65}, "steps=65"),
        ("faithfulness_estimate", {"steps": 100}, "steps=100"),
        ("monotonicity_correlation", {"steps": 65}, "steps=65"),
        ("region_perturbation", {"patch_size": 4, "regions": 5}, "regions=5"),
        ("faithfulness_correlation", {"subset_size": 65}, "subset_size=65"),
    ],
)
def test_step_counts_above_the_pixel_count_name_the_key(name, params, key):
    (metric,) = build_metrics({name: params}, "cpu")
    with pytest.raises(ValueError, match=key) as err:
        metric.update(toy_batch(torch.rand(2, 4, 4)))
    assert "\n" not in str(err.value) and "lower" in str(err.value)


def test_seeded_metrics_do_not_depend_on_batching():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(3))
    batch = toy_batch(maps)
    settings = {
        "region_perturbation": {"patch_size": 4, "regions": 3},
        "monotonicity_correlation": {"steps": 4, "samples": 2},
        "faithfulness_correlation": {"runs": 4, "subset_size": 6},
        "road": {"percentages": [30, 70]},
    }
    for name, params in settings.items():
        (whole,) = build_metrics({name: params}, "cpu")
        (parts,) = build_metrics({name: {**params, "chunk_size": 3}}, "cpu")
        together = whole.update(batch)
        apart = parts.update(batch.rows(0, 1)) + parts.update(batch.rows(1, 3))
        for a, b in zip(together, apart, strict=True):
            for key, value in a.items():
                # up to float round-off of batched kernels (correlations of small drops amplify it)
                assert b[key] == pytest.approx(value, abs=1e-4), (name, key)


def test_bench_refuses_step_counts_quantus_cannot_match():
    from evalcam.bench.faithfulness_metrics import bench_rows, format_rows

    with pytest.raises(ValueError, match=r"steps=16 must be 3\*m with m dividing 224\*224"):
        bench_rows(images=1, steps=16)
    row = {"metric": "irof", "evalcam_s": 1.5, "evalcam_forwards": 12, "quantus_s": None, "floor_s": 1.25}
    row |= {"time_floor": 1.2, "quantus_forwards": None, "ratio": None, "wall_ratio": None, "note": "no peer"}
    line = "| irof | 12 / n/a | 1.50 | 1.25 | 1.20x | n/a | n/a; n/a | no peer |"
    assert format_rows([row]).splitlines()[-1] == line
