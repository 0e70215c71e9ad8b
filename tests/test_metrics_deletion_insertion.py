"""RISE deletion/insertion (Petsiuk et al. 2018) on toy models with known answers and against a transcription
of RISE's evaluation loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ConvToy, LinearToy, assert_merged_halves_equal_one_accumulator, make_batch, toy_bundle
from torch import nn

from evalcam.metrics.deletion_insertion import (
    Deletion,
    Insertion,
    blur,
    curve_auc,
    gaussian_kernel,
    saliency_rank,
)


def _batch(bundle, inputs, classes, maps):
    return make_batch(bundle, inputs, classes, maps, id_prefix="")


def test_auc_is_the_trapezoid_rule_on_a_unit_interval():
    curve = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0])
    assert float(curve_auc(curve)) == pytest.approx(np.trapezoid(curve.numpy(), np.linspace(0, 1, 5)))
    assert float(curve_auc(curve)) == pytest.approx(3.75)
    assert float(curve_auc(torch.ones(3))) == pytest.approx(1.0)


def _single_channel_toy(values):
    weights = torch.zeros(1, 3, 2, 2)
    weights[0, 0] = 1.0  # logit = sum of channel 0
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor(values)
    return toy_bundle(LinearToy(weights), (2, 2)), x


def test_deletion_curve_on_a_linear_model():
    bundle, x = _single_channel_toy([[4.0, 3.0], [2.0, 1.0]])
    metric = Deletion(step=1, score="logit")
    good = metric.update(_batch(bundle, x, [0], x[0, 0].clone()))[0]  # most salient = largest pixel
    bad = metric.update(_batch(bundle, x, [0], -x[0, 0].clone()))[0]
    assert good["deletion.score_start"] == pytest.approx(10.0)
    assert good["deletion.score_end"] == pytest.approx(0.0)
    assert good["deletion.auc"] == pytest.approx((10 + 6 + 3 + 1 + 0 - 5) / 4)  # curve 10, 6, 3, 1, 0
    assert bad["deletion.auc"] == pytest.approx((10 + 9 + 7 + 4 + 0 - 5) / 4)  # curve 10, 9, 7, 4, 0
    assert metric.compute()["auc"] == pytest.approx((3.75 + 6.25) / 2)


def test_insertion_from_a_flat_substrate_and_coarse_steps():
    bundle, x = _single_channel_toy([[4.0, 3.0], [2.0, 1.0]])
    record = Insertion(step=3, substrate="zero", score="logit").update(
        _batch(bundle, x, [0], x[0, 0].clone())
    )[0]
    # ceil(4 / 3) = 2 steps: 0 -> 4 + 3 + 2 = 9 -> 10
    assert record["insertion.auc"] == pytest.approx((0 + 9 + 10 - 0 - 5) / 2)


def test_saliency_ties_follow_raster_order_and_degenerate_maps_are_flagged():
    rank, degenerate = saliency_rank(torch.tensor([[[1.0, 5.0], [5.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]]))
    assert rank.tolist() == [[2, 0, 1, 3], [0, 1, 2, 3]]
    assert degenerate.tolist() == [False, True]


def _rise_reference(model, image, explanation, mode, step, substrate_fn):
    """RISE's CausalMetric.single_run (eclique/RISE evaluation.py), transcribed for one image."""
    hw = image.shape[-1] * image.shape[-2]
    c = int(model(image).argmax())
    n_steps = (hw + step - 1) // step
    start, finish = (
        (image.clone(), substrate_fn(image)) if mode == "del" else (substrate_fn(image), image.clone())
    )
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        scores[i] = float(model(start).softmax(-1)[0, c])
        if i < n_steps:
            coords = salient_order[:, step * i : step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)


def _rise_blur(x):
    kernel = torch.zeros(3, 3, 11, 11)
    k = gaussian_kernel(11, 5.0)
    for channel in range(3):
        kernel[channel, channel] = k
    return nn.functional.conv2d(x, kernel, padding=5)


@pytest.mark.parametrize("mode", ["del", "ins"])
def test_deletion_and_insertion_match_the_rise_loop(mode):
    model = ConvToy().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 12, 12, generator=g)
    maps = torch.rand(2, 12, 12, generator=g)  # continuous values: no ties, so the orders agree exactly
    classes = model(x).argmax(1).tolist()
    bundle = toy_bundle(model, (12, 12))
    metric = Deletion(step=10, chunk_size=9) if mode == "del" else Insertion(step=10, chunk_size=9)
    records = metric.update(_batch(bundle, x, classes, maps))
    substrate = torch.zeros_like if mode == "del" else _rise_blur
    with torch.no_grad():
        expected = [
            _rise_reference(model, x[i : i + 1], maps[i].numpy(), mode, 10, substrate) for i in range(2)
        ]
    key = "deletion.auc" if mode == "del" else "insertion.auc"
    assert [r[key] for r in records] == [pytest.approx(e, abs=1e-6) for e in expected]


def test_rise_blur_kernel():
    k = gaussian_kernel(11, 5.0)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)  # scipy's 'reflect' keeps the mass of the delta
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    assert float(k.max()) == float(k[5, 5])
    x = torch.ones(1, 3, 30, 30)
    out = blur(x)
    assert torch.allclose(out[..., 5:-5, 5:-5], torch.ones(1, 3, 20, 20), atol=1e-5)  # interior untouched
    assert float(out[0, 0, 0, 0]) < 0.5  # zero padding darkens corners, as in RISE


@pytest.mark.parametrize("make", [lambda: Deletion(step=24), lambda: Insertion(step=24)])
def test_merged_halves_equal_one_accumulator(make):
    assert_merged_halves_equal_one_accumulator(make)


def test_incremental_setting_never_changes_the_games_on_real_photos(tmp_path):
    """Regression: the incremental insertion path once gave 0.369 where the dense game gives 0.595 (Grad-CAM,
    Lite0, 10 ILSVRC images): chains of the games that run first wrote their steps into the batch's images
    (0.362 vs 0.659 here). Every cumulative game, and those after it on a batch, must agree either way."""
    import json

    from conftest import config_for

    from evalcam.runner import run

    games = ("pixel_flipping", "deletion", "insertion", "irof", "region_perturbation")
    values = []
    for setting in ("true", "false"):
        result = run(
            config_for(
                tmp_path / setting, "dataset.limit=2", "batch_size=2", f"metrics=[{','.join(games)}]",
                "metrics.pixel_flipping.baseline=black", "metrics.pixel_flipping.steps=16",
                "metrics.irof.n_segments=25", "metrics.region_perturbation.regions=30",
                *(f"metrics.{game}.incremental={setting}" for game in games),
            )
        )  # fmt: skip
        values.append(json.loads((result.run_dir / "summary.json").read_text())["metrics"])
    keys = [k for k in values[1] if k.split("/")[0] in games and not k.endswith(("ci_low", "ci_high"))]
    assert {
        "pixel_flipping/auc",
        "deletion/auc",
        "insertion/auc",
        "irof/aoc",
        "region_perturbation/aopc",
    } <= set(keys)
    for key in keys:
        assert values[0][key] == pytest.approx(values[1][key], abs=1e-4), key
