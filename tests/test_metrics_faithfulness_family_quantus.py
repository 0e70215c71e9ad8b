"""Parity of the faithfulness family with Quantus 0.6 (optional test dependency) on identical inputs:
a small CNN, three 24 x 24 images, the same maps (upsampled as evalcam scores them) and the same baseline
values. Tolerance: 1e-5 absolute on softmax scores (float32 forwards of differently sized batches).

Where the protocols differ, the test pins how: Quantus's pixel flipping omits the clean point, region
perturbation reports drops, IROF reports the un-normalized area ``n - trapz(r_1..r_n)``; ROAD's imputer is
compared on the same mask (Quantus mixes channel and pixel indices in its ROAD mask). Infidelity and
sufficiency are not compared number for number (see their module docstrings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")
if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, removed in NumPy 2.4
    np.trapz = np.trapezoid

from conftest import ConvToy, make_batch  # noqa: E402

from evalcam.metrics.faithful_base import input_cams  # noqa: E402
from evalcam.metrics.faithfulness_correlation import FaithfulnessCorrelation  # noqa: E402
from evalcam.metrics.faithfulness_estimate import FaithfulnessEstimate  # noqa: E402
from evalcam.metrics.irof import IROF  # noqa: E402
from evalcam.metrics.monotonicity_correlation import MonotonicityCorrelation  # noqa: E402
from evalcam.metrics.pixel_flipping import PixelFlipping  # noqa: E402
from evalcam.metrics.region_perturbation import RegionPerturbation  # noqa: E402
from evalcam.metrics.road import linear_imputation  # noqa: E402

SIZE = 24
TOL = 1e-5


@pytest.fixture(scope="module")
def case():
    model = ConvToy(gaussian_scale=0.5).eval()
    generator = torch.Generator().manual_seed(21)
    # smooth-ish images (so SLIC finds segments) with noise
    base = torch.rand(3, 3, 4, 4, generator=generator)
    inputs = torch.nn.functional.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    inputs = inputs + 0.05 * torch.rand(3, 3, SIZE, SIZE, generator=generator)
    # maps at input resolution: bilinear upsampling by an integer factor makes ties, which Quantus's
    # unstable argsort would order arbitrarily
    maps = torch.rand(3, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        classes = model(inputs).argmax(1)
    batch = make_batch(model, inputs, classes.tolist(), maps)
    cams, _ = input_cams(batch)
    return {
        "model": model,
        "batch": batch,
        "x": inputs.numpy().astype(np.float32),
        "y": classes.numpy(),
        "a": cams.float().numpy()[:, None],
    }


def run_quantus(metric, case, **kwargs):
    return metric(
        model=case["model"],
        x_batch=case["x"],
        y_batch=case["y"],
        a_batch=case["a"],
        device="cpu",
        softmax=True,
        channel_first=True,
        **kwargs,
    )


def test_pixel_flipping_matches_quantus(case):
    ours, _ = PixelFlipping(steps=36, baseline="mean").curves(case["batch"])
    theirs = run_quantus(
        quantus.PixelFlipping(
            features_in_step=3 * SIZE * SIZE // 36,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            disable_warnings=True,
        ),
        case,
    )
    assert np.allclose(ours[:, 1:].numpy(), np.asarray(theirs), atol=TOL)


def test_region_perturbation_matches_quantus_drops_and_pins_the_aopc(case):
    metric = RegionPerturbation(patch_size=4, regions=10, baseline="mean")
    ours, _ = metric.curves(case["batch"])
    theirs = np.asarray(
        run_quantus(
            quantus.RegionPerturbation(
                patch_size=4,
                regions_evaluation=10,
                perturb_baseline=0.0,
                normalise=False,
                abs=False,
                disable_warnings=True,
            ),
            case,
        )
    )
    drops = (ours[:, :1] - ours[:, 1:]).numpy()
    assert np.allclose(drops, theirs, atol=TOL)
    # the paper's AOPC averages L + 1 points (k = 0 included): L / (L + 1) x the mean of Quantus's drops
    records = metric.update(case["batch"])
    paper = [r["region_perturbation.aopc"] for r in records]
    assert np.allclose(paper, theirs.mean(1) * 10 / 11, atol=TOL)


def test_irof_curve_matches_quantus_and_pins_the_normalization(case):
    metric = IROF(baseline="mean")
    curves, _ = metric.curves(case["batch"])
    assert all(len(c) > 3 for c in curves)
    theirs = np.asarray(
        run_quantus(
            quantus.IROF(
                # Quantus 0.6's default baseline_replacement_by_mask asserts a [B, 1, H, W] mask equals
                # the [B, 3, H, W] input's shape (it fails on colour images): broadcast the mask instead
                perturb_func=lambda arr, mask, **kwargs: np.where(mask, 0.0, arr),
                normalise=False,
                abs=False,
                return_aggregate=False,
                disable_warnings=True,
            ),
            case,
        )
    )
    # Quantus: n - trapz(r_1..r_n) with unit spacing and no r_0; the paper's area is over x in [0, 1].
    # Quantus pads the curves of images with fewer segments than the batch's largest count with zeros and
    # integrates over the padding too, so those images lose r_n / 2: its IROF depends on the batch.
    longest = max(len(c) for c in curves)
    pinned = [
        len(c) - 1 - np.trapezoid(c[1:].numpy()) - (float(c[-1]) / 2 if len(c) < longest else 0.0)
        for c in curves
    ]
    assert np.allclose(pinned, theirs, atol=1e-4)
    records = metric.update(case["batch"])
    for record, curve in zip(records, curves, strict=True):
        n = len(curve) - 1
        assert record["irof.aoc"] == pytest.approx(1 - np.trapezoid(curve.numpy(), dx=1 / n), abs=1e-9)


def test_faithfulness_estimate_matches_quantus(case):
    records = FaithfulnessEstimate(steps=36, baseline="mean").update(case["batch"])
    theirs = run_quantus(
        quantus.FaithfulnessEstimate(
            features_in_step=3 * SIZE * SIZE // 36,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            disable_warnings=True,
        ),
        case,
    )
    ours = [r["faithfulness_estimate.pearson"] for r in records]
    assert np.allclose(ours, theirs, atol=1e-4)


def test_monotonicity_correlation_matches_quantus_with_a_fixed_baseline(case):
    records = MonotonicityCorrelation(steps=9, samples=1, baseline="mean").update(case["batch"])
    theirs = run_quantus(
        quantus.MonotonicityCorrelation(
            features_in_step=3 * SIZE * SIZE // 9,
            nr_samples=1,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            disable_warnings=True,
        ),
        case,
    )
    ours = [r["monotonicity_correlation.spearman"] for r in records]
    assert np.allclose(ours, theirs, atol=1e-6)


def test_faithfulness_correlation_matches_quantus_on_the_same_pixel_subsets(case, monkeypatch):
    metric = FaithfulnessCorrelation(runs=8, subset_size=40, baseline="mean")
    subsets = metric.subsets(case["batch"]).numpy()  # [B, runs, size] pixel indices
    pixels = SIZE * SIZE
    # Quantus draws feature indices of the channel-broadcast map (np.random.choice per image and run):
    # hand it the same pixels, all channels of each.
    draws = iter(
        np.concatenate([subsets[i, r] + c * pixels for c in range(3)])
        for r in range(subsets.shape[1])
        for i in range(subsets.shape[0])
    )
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
    theirs = run_quantus(
        quantus.FaithfulnessCorrelation(
            nr_runs=8,
            subset_size=3 * 40,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            return_aggregate=False,
            disable_warnings=True,
        ),
        case,
    )
    ours = [r["faithfulness_correlation.pearson"] for r in metric.update(case["batch"])]
    assert np.allclose(ours, theirs, atol=1e-4)


def test_road_imputation_matches_quantus_noisy_linear_imputation():
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    generator = np.random.default_rng(3)
    image = generator.random((3, 12, 10))
    missing = generator.random((12, 10)) < 0.5
    ours = linear_imputation(image, missing)
    theirs = quantus_imputation(image, np.flatnonzero(missing.reshape(-1)), noise=0.0)
    assert np.allclose(ours, theirs, atol=1e-10)
