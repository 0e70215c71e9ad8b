"""Parity of the faithfulness family with Quantus 0.6 (optional test dependency) on identical inputs:
a small CNN, three 24 x 24 images, the same maps (upsampled as evalcam scores them) and the same baseline
values. Tolerance: 1e-5 absolute on softmax scores (float32 forwards of differently sized batches).

Where the protocols differ, the test pins how: Quantus's pixel flipping omits the clean point, region
perturbation reports drops, IROF reports the un-normalized area ``n - trapz(r_1..r_n)``. Sufficiency is
compared on a batch with neighbours (and Quantus's NaN distances pinned); infidelity with one square per
perturbed copy (Quantus's default accumulates its squares: reproduced explicitly, and evalcam's optimally
scaled value checked against the paper's formula); ROAD's MoRF accuracies on grey images (Quantus's ROAD
mixes channel and pixel indices in its mask on colour inputs: pinned)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")
if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, removed in NumPy 2.4
    np.trapz = np.trapezoid

from conftest import MEAN, STD, ConvToy, make_batch  # noqa: E402

from evalcam.metrics.faithful_base import input_cams  # noqa: E402
from evalcam.metrics.faithfulness_correlation import FaithfulnessCorrelation  # noqa: E402
from evalcam.metrics.faithfulness_estimate import FaithfulnessEstimate  # noqa: E402
from evalcam.metrics.infidelity import Infidelity  # noqa: E402
from evalcam.metrics.irof import IROF  # noqa: E402
from evalcam.metrics.monotonicity_correlation import MonotonicityCorrelation  # noqa: E402
from evalcam.metrics.pixel_flipping import PixelFlipping  # noqa: E402
from evalcam.metrics.region_perturbation import RegionPerturbation  # noqa: E402
from evalcam.metrics.road import ROAD, linear_imputation  # noqa: E402
from evalcam.metrics.sufficiency import Sufficiency  # noqa: E402

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


def test_sufficiency_matches_quantus_on_a_batch_with_neighbours():
    """Quantus's ``Sufficiency`` with its defaults (abs, normalise_by_max, seuclidean; threshold 0.3 on both
    sides) on seven images of two predicted classes: three maps near one pattern (classes 3, 3, 2), two near
    another (classes 2, 2; one negated, so ``abs`` matters), one apart (no neighbours: 0) and one that is 3 x
    the first pattern: Quantus's normalise_by_max divides the whole batch by one maximum, so that map stays
    apart (dividing each map by its own maximum, as evalcam did before, makes it a neighbour of the first
    three: 2/3, 2/3, 0, 1, 1, 0, 2/3 where Quantus gives 1/2, 1/2, 0, 1, 1, 0, 0; the paper compares
    explanations as they are). The normalized distances are ~0.03 within a group, 0.42-0.43 between the
    first six maps and >= 0.92 to the last, so the values are exact fractions on both sides (compared with
    1e-12); threshold 0.5 joins the first six."""
    model = ConvToy().eval()
    generator = torch.Generator().manual_seed(5)
    pool = 3 * torch.randn(16, 3, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        predicted = model(pool).argmax(1)
    threes, twos = (torch.nonzero(predicted == c).flatten().tolist() for c in (3, 2))
    order = [threes[0], threes[1], twos[0], twos[1], twos[2], threes[2], threes[3]]
    inputs, classes = pool[order], predicted[order]
    first, second, apart = torch.rand(3, SIZE, SIZE, generator=generator)

    def near(pattern):
        return pattern + 0.05 * torch.rand(SIZE, SIZE, generator=generator)

    maps = torch.stack(
        [near(first), near(first), near(first), near(second), -near(second), apart, 3 * near(first)]
    )

    def both(maps, threshold=0.3):
        metric = Sufficiency(threshold=threshold)
        ours = [r["sufficiency.sufficiency"] for r in metric.update(make_batch(model, inputs, classes, maps))]
        theirs = quantus.Sufficiency(threshold=threshold, disable_warnings=True)(
            model=model,
            x_batch=inputs.numpy(),
            y_batch=classes.numpy(),
            a_batch=maps.numpy()[:, None],
            device="cpu",
            channel_first=True,
        )
        return np.asarray(ours), np.asarray(theirs), metric.compute()["no_neighbours"]

    ours, theirs, lonely = both(maps)
    assert np.allclose(ours, theirs, atol=1e-12)
    assert np.allclose(ours, [0.5, 0.5, 0.0, 1.0, 1.0, 0.0, 0.0], atol=1e-12)
    assert lonely == 2
    ours, theirs, lonely = both(maps, threshold=0.5)
    assert np.allclose(ours, theirs, atol=1e-12)
    assert np.allclose(ours, [0.4] * 6 + [0.0], atol=1e-12)
    assert lonely == 1
    # A pixel equal in every map (0 here, as where ReLU'd CAMs are all zero) has zero variance: scipy's
    # seuclidean divides by it and every distance is NaN, so Quantus finds no neighbours at all; evalcam
    # leaves the pixel out.
    maps[:, 0, 0] = 0.0
    ours, theirs, _ = both(maps)
    assert np.allclose(ours, [0.5, 0.5, 0.0, 1.0, 1.0, 0.0, 0.0], atol=1e-12)
    assert np.all(theirs == 0.0)


#: maps x this factor: the explained changes ``e`` (sums of map x input over a 4 x 4 x 3 square) are then of
#: the size of the model's changes ``d`` (softmax scores), so an error in either shows
INFIDELITY_SCALE = 0.0005


def infidelity_case(case):
    batch = case["batch"]
    return dataclasses.replace(batch, pred_maps=batch.pred_maps * INFIDELITY_SCALE), {
        **case,
        "a": case["a"] * INFIDELITY_SCALE,
    }


def quantus_infidelity(case, patch, **kwargs):
    return np.asarray(
        run_quantus(
            quantus.Infidelity(
                perturb_patch_sizes=[patch],
                n_perturb_samples=1,  # its samples repeat the same deterministic squares
                perturb_baseline=0.0,
                abs=False,
                normalise=False,
                disable_warnings=True,
                **kwargs,
            ),
            case,
        )
    )


def test_infidelity_matches_quantus_with_one_square_per_copy(case):
    """evalcam's ``scaled: false`` (beta = 1) against Quantus's ``Infidelity`` where each perturbed copy
    lacks one square only: both are ``mean_s (sum(a (x - x'_s)) - (p(x) - p(x'_s)))^2`` over the 36 squares
    of a 4-pixel grid (Quantus's mse of ``pred_deltas`` and ``a_sums``; softmax scores of the given class on
    both sides; the map broadcast over channels). Quantus 0.6 keeps each square removed in the next copy
    (its loop perturbs the running ``x_perturbed``); a ``perturb_func`` that starts from the clean image
    every time undoes that, and with one square covering the whole image its default needs no help.
    Tolerance: 1e-5 relative (Quantus sums ``a (x - x')`` in float32)."""
    batch, scaled = infidelity_case(case)
    clean = scaled["x"].reshape(len(scaled["x"]), -1)

    def one_square(arr, indices, **kwargs):
        return quantus.functions.perturb_func.batch_baseline_replacement_by_indices(
            clean, indices, perturb_baseline=0.0
        )

    ours = Infidelity(patch_size=4, stride=4, baseline="mean", scaled=False, score="prob")
    values = [r["infidelity.infidelity"] for r in ours.update(batch)]
    assert np.allclose(values, quantus_infidelity(scaled, 4, perturb_func=one_square), rtol=1e-5, atol=0)
    whole = Infidelity(patch_size=SIZE, stride=SIZE, baseline="mean", scaled=False, score="prob")
    values = [r["infidelity.infidelity"] for r in whole.update(batch)]
    assert np.allclose(values, quantus_infidelity(scaled, SIZE), rtol=1e-5, atol=0)


def test_infidelity_pins_quantus_cumulative_squares_and_checks_the_papers_optimal_scale(case):
    """Quantus's default ``Infidelity`` reproduced in a few lines: copy ``k`` lacks squares ``0..k`` of the
    raster order (cumulative) and the loss is unscaled; evalcam's default (each copy lacks one square, beta =
    ``mean(e d) / mean(e^2)``, Yeh et al. 2019 with the authors' optimal scaling) equals the paper's formula
    written out here. Tolerances: 1e-5 relative (float32 forwards)."""
    batch, scaled = infidelity_case(case)
    model, x = case["model"], torch.from_numpy(scaled["x"])
    a, classes = torch.from_numpy(scaled["a"]), torch.from_numpy(case["y"])
    rows = torch.arange(len(x))

    def explained_and_change(perturbed, score):
        with torch.no_grad():
            out = model(torch.cat([x, perturbed]))
        out = out.softmax(1) if score == "prob" else out
        before, after = out[: len(x)][rows, classes], out[len(x) :][rows, classes]
        return (a * (x - perturbed)).flatten(1).double().sum(1), (before - after).double()

    squares = [(y, z) for y in range(0, SIZE, 4) for z in range(0, SIZE, 4)]
    running = x.clone()
    cumulative = []
    for y, z in squares:
        running[:, :, y : y + 4, z : z + 4] = 0.0
        e, d = explained_and_change(running.clone(), "prob")
        cumulative.append((e - d) ** 2)
    pinned = torch.stack(cumulative, 1).mean(1).numpy()
    assert np.allclose(pinned, quantus_infidelity(scaled, 4), rtol=1e-5, atol=0)

    single = []
    for y, z in squares:
        perturbed = x.clone()
        perturbed[:, :, y : y + 4, z : z + 4] = 0.0
        single.append(explained_and_change(perturbed, "logit"))
    e = torch.stack([s[0] for s in single], 1)
    d = torch.stack([s[1] for s in single], 1)
    beta = (e * d).mean(1, keepdim=True) / (e**2).mean(1, keepdim=True)
    paper = ((beta * e - d) ** 2).mean(1).numpy()
    ours = Infidelity(patch_size=4, stride=4, baseline="mean", scaled=True, score="logit").update(batch)
    assert np.allclose([r["infidelity.infidelity"] for r in ours], paper, rtol=1e-5, atol=0)
    assert not np.allclose(paper, pinned, rtol=0.1)  # the two protocols are far apart here


ROAD_PERCENTAGES = [10, 20, 30, 40, 50, 60, 70, 80, 90]


@pytest.fixture(scope="module")
def grey_case():
    """Six grey noise images (the same value in the three channels) whose MoRF accuracy falls at different
    percentages, random maps, ConvToy's default weights, preprocessing ``MEAN``/``STD``."""
    model = ConvToy().eval()
    generator = torch.Generator().manual_seed(0)
    grey = 3 * torch.randn(6, 1, SIZE, SIZE, generator=generator)
    inputs = grey.expand(-1, 3, -1, -1).contiguous()
    maps = torch.rand(6, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        classes = model(inputs).argmax(1)
    return {
        "model": model,
        "batch": make_batch(model, inputs, classes.tolist(), maps, mean=MEAN, std=STD),
        "grey": grey.numpy(),
        "x": inputs.numpy(),
        "y": classes.numpy(),
        "maps": maps.numpy(),
    }


def quantus_road(model, x, y, a, percentages):
    """Quantus's per-image ROAD hits ``[B, P]`` (noise 0) and the metric, whose ``evaluation_scores`` still
    hold them: its ``custom_postprocess``, which keeps only the first batch's mean per percentage, is
    deferred."""
    metric = quantus.ROAD(
        percentages=percentages, noise=0.0, normalise=False, abs=False, disable_warnings=True
    )
    metric.custom_postprocess = lambda **kwargs: None
    scores = metric(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu", channel_first=True)
    return np.asarray(scores[0]), metric


class Grey(torch.nn.Module):
    """The model on a one-channel input repeated over its three channels (a three-channel input passes
    unchanged), keeping every input it is given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x.expand(-1, 3, -1, -1))


def test_road_morf_matches_quantus_on_grey_images(grey_case):
    """Quantus's ``ROAD`` (MoRF only, top-1 accuracy only, imputation in the network's input space) against
    evalcam's MoRF, noise 0 on both sides: the imputed inputs each side feeds the network (1e-5 absolute)
    and the hits per image and percentage (exact). Quantus's mask is right for one channel, so it gets the
    grey images as one channel (the network behind :class:`Grey`) and removes the ``int(H*W*p/100)`` most
    salient pixels, as evalcam does on the three equal channels. evalcam imputes in pixel units and
    normalizes afterwards (here ``MEAN``/``STD``), Quantus in input space: without noise the two agree, since
    linear imputation commutes with the affine normalization (the weights of each equation sum to one); with
    noise they would not (``noise`` x N(0, 1) in different units). Differences that remain: no LeRF and no
    probabilities in Quantus, which reports the batch mean per percentage where evalcam logs per image the
    mean over percentages, and breaks saliency ties by an unstable argsort (the random maps have none)."""
    model = grey_case["model"]
    ours_net, theirs_net = Grey(model).eval(), Grey(model).eval()
    batch = dataclasses.replace(
        grey_case["batch"], bundle=dataclasses.replace(grey_case["batch"].bundle, model=ours_net)
    )
    _, hits, _ = ROAD(percentages=ROAD_PERCENTAGES, noise=0.0).scores(batch)
    morf = hits[:, 0].numpy()
    theirs, metric = quantus_road(
        theirs_net, grey_case["grey"], grey_case["y"], grey_case["maps"][:, None], ROAD_PERCENTAGES
    )
    images, steps = len(morf), len(ROAD_PERCENTAGES)
    # evalcam: image-major, MoRF then LeRF copies; Quantus: one batch per percentage
    ours_inputs = torch.cat(ours_net.seen).view(images, 2, steps, 3, SIZE, SIZE)[:, 0]
    theirs_inputs = torch.cat(theirs_net.seen).view(steps, images, 1, SIZE, SIZE).transpose(0, 1)
    assert torch.allclose(ours_inputs, theirs_inputs.expand_as(ours_inputs), atol=1e-5, rtol=0)
    assert np.array_equal(morf, theirs)
    assert 0 < morf.mean() < 1 and not np.array_equal(morf, hits[:, 1].numpy())  # the masks matter
    quantus.ROAD.custom_postprocess(metric)
    assert list(metric.evaluation_scores) == ROAD_PERCENTAGES
    assert np.allclose(list(metric.evaluation_scores.values()), morf.mean(0), atol=1e-12)


def test_road_pins_quantus_mixing_channel_and_pixel_indices_on_colour_inputs(grey_case):
    """On a three-channel input (the grey images as three channels here: only the shape matters) Quantus
    ranks the features of the channel-broadcast map (``C*H*W`` indices), takes ``int(a_size * p / 100)`` of
    them and hands them to the imputer as pixel indices of an ``H*W`` mask. With the usual one-channel map
    every pixel's three copies tie, so the top features include indices ``>= H*W`` and the imputer fails.
    With a three-channel map whose channels 1 and 2 rank below all of channel 0 the indices are pixels, but
    ``a_size`` is then ``C*H*W``: Quantus at ``p`` removes the pixels evalcam removes at ``3p``."""
    x, y, maps = grey_case["x"], grey_case["y"], grey_case["maps"]
    pixels = SIZE * SIZE
    # Quantus's selection at 10 %: 57 features, the three channel copies of the 19 most salient pixels
    broadcast = np.broadcast_to(maps[:, None], x.shape).reshape(len(x), -1)
    taken = np.sort(np.argsort(-broadcast, axis=1)[:, : int(pixels * 10 / 100)], axis=1)
    top = np.argsort(-maps.reshape(len(x), -1), axis=1)[:, :19]
    copies = np.sort(np.concatenate([top + c * pixels for c in range(3)], axis=1), axis=1)
    assert np.array_equal(taken, copies) and taken.max() >= pixels
    with pytest.raises(IndexError, match="out of bounds"):
        quantus_road(grey_case["model"], x, y, maps[:, None], [10])

    below = np.concatenate([maps[:, None], np.repeat(maps[:, None] - 2, 2, axis=1)], axis=1)
    theirs, _ = quantus_road(grey_case["model"], x, y, below, [10, 20, 30])
    _, tripled, _ = ROAD(percentages=[30, 60, 90], noise=0.0).scores(grey_case["batch"])
    _, same, _ = ROAD(percentages=[10, 20, 30], noise=0.0).scores(grey_case["batch"])
    assert np.array_equal(theirs, tripled[:, 0].numpy())
    assert not np.array_equal(theirs, same[:, 0].numpy())
