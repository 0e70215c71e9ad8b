"""Metrics that re-run the model on perturbed inputs (occlusion faithfulness, RISE deletion/insertion,
Grad-CAM++ Average Drop / Increase in Confidence) on toy models with known answers, against captum's
Occlusion and a transcription of RISE's evaluation loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from conftest import ConvToy, LinearToy, make_batch, toy_bundle
from torch import nn

from evalcam.methods.occlusion import occlusion_boxes, patch_origins
from evalcam.metrics.causal import Deletion, Insertion, blur, curve_auc, gaussian_kernel, saliency_rank
from evalcam.metrics.confidence import AverageDrop, masked_inputs
from evalcam.metrics.faithfulness import OcclusionFaithfulness, occlusion_map


def _batch(bundle, inputs, classes, maps):
    return make_batch(bundle, inputs, classes, maps, id_prefix="")


# --- occlusion -------------------------------------------------------------------------------------------


def test_patch_origins_cover_the_border():
    assert patch_origins(10, 4, 3) == [0, 3, 6]
    assert patch_origins(11, 4, 3) == [0, 3, 6, 7]  # flush with the far edge
    assert patch_origins(5, 9, 2) == [0]  # a patch bigger than the image is the image


@pytest.mark.parametrize("incremental", [False, True])
def test_occlusion_map_equals_captum_occlusion(incremental):
    model = ConvToy().eval()
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    classes = torch.tensor([1, 4])
    boxes = occlusion_boxes((10, 10), 4, 3)
    ours = occlusion_map(
        model,
        x,
        classes,
        boxes,
        torch.zeros(1, 3, 1, 1),
        score="logit",
        chunk_size=7,
        incremental=incremental,
    )
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 3, 3), baselines=0.0, target=classes
    )
    assert torch.allclose(ours.float(), theirs[:, 0], atol=1e-5)
    assert torch.allclose(theirs[:, 0], theirs[:, 2], atol=1e-6)  # windows span all channels


def test_faithfulness_is_one_for_the_occlusion_map_itself_and_minus_one_reversed():
    weights = torch.zeros(2, 3, 4, 4)
    weights[0, 0, :2, :2] = 1.0  # class 0 reads the top-left block
    bundle = toy_bundle(LinearToy(weights), (4, 4))
    inputs = torch.ones(2, 3, 4, 4)
    truth = torch.zeros(4, 4)
    truth[:2, :2] = 1.0
    metric = OcclusionFaithfulness(patch_size=2, stride=2)
    records = metric.update(_batch(bundle, inputs, [0, 0], torch.stack([truth, 1 - truth])))
    assert [r["faithfulness.spearman"] for r in records] == [pytest.approx(1.0), pytest.approx(-1.0)]
    assert metric.compute()["spearman"] == pytest.approx(0.0)


def test_faithfulness_degenerate_map_scores_zero():
    weights = torch.zeros(2, 3, 4, 4)
    weights[0, 0, :2, :2] = 1.0
    bundle = toy_bundle(LinearToy(weights), (4, 4))
    metric = OcclusionFaithfulness(patch_size=2, stride=2)
    metric.update(_batch(bundle, torch.ones(1, 3, 4, 4), [0], torch.zeros(1, 4, 4)))
    out = metric.compute()
    assert out["spearman"] == 0.0 and out["degenerate_maps"] == 1.0


# --- deletion / insertion --------------------------------------------------------------------------------


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


# --- Average Drop / Increase in Confidence ---------------------------------------------------------------


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_average_drop_and_increase_in_confidence_by_hand():
    weights = torch.zeros(2, 3, 2, 2)
    weights[0, 0] = 1.0  # logit0 = sum(channel 0) - 0.25 sum(channel 1); logit1 = 0
    weights[0, 1] = -0.25
    bundle = toy_bundle(LinearToy(weights), (2, 2))
    x = torch.zeros(2, 3, 2, 2)
    x[0, 0] = 0.5  # Y = s(2); keeping one pixel: O = s(0.5) -> drop
    x[1, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    x[1, 1] = torch.tensor(
        [[0.0, 1.0], [1.0, 1.0]]
    )  # Y = s(0.25); the map removes the negative evidence: O = s(1)
    cam = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    metric = AverageDrop()
    records = metric.update(_batch(bundle, x, [0, 0], torch.stack([cam, cam])))
    out = metric.compute()
    drop_a = (sigmoid(2) - sigmoid(0.5)) / sigmoid(2)
    assert records[0]["avg_drop.y"] == pytest.approx(sigmoid(2))
    assert records[0]["avg_drop.o"] == pytest.approx(sigmoid(0.5))
    assert records[1]["avg_drop.o"] == pytest.approx(sigmoid(1))
    assert out["avg_drop"] == pytest.approx((drop_a + 0.0) / 2)  # a fraction, like every metric
    assert out["increase_conf"] == pytest.approx(0.5)


def test_explanation_map_is_taken_in_pixel_space():
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    inputs = torch.ones(1, 3, 2, 2)  # pixel value 0.75
    cam = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # min-max -> [[1, 0], [0.5, 0]]
    pixel, _ = masked_inputs(inputs, cam, mean, std, "pixel")
    assert pixel[0, 0].tolist() == [[1.0, -2.0], [-0.5, -2.0]]  # (0.75 * L - 0.5) / 0.25; black = -2
    normalized, _ = masked_inputs(inputs, cam, mean, std, "normalized")
    assert normalized[0, 0].tolist() == [[1.0, 0.0], [0.5, 0.0]]
    _, degenerate = masked_inputs(inputs, torch.full((1, 2, 2), float("nan")), mean, std)
    assert degenerate.tolist() == [True]


# --- merging ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: OcclusionFaithfulness(patch_size=4, stride=4),
        lambda: Deletion(step=24),
        lambda: Insertion(step=24),
        AverageDrop,
    ],
)
def test_merged_halves_equal_one_accumulator(make):
    model = ConvToy().eval()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 8, 8, generator=g)
    maps = torch.rand(4, 4, 4, generator=g)
    classes = model(x).argmax(1).tolist()
    bundle = toy_bundle(model, (8, 8))
    whole, first, second = make(), make(), make()
    whole.update(_batch(bundle, x, classes, maps))
    first.update(_batch(bundle, x[:2], classes[:2], maps[:2]))
    second.update(_batch(bundle, x[2:], classes[2:], maps[2:]))
    first.merge(second)
    merged, single = first.compute(), whole.compute()
    assert merged.keys() == single.keys()
    assert all(merged[k] == pytest.approx(single[k], abs=1e-9) for k in merged)


def test_occlusion_cache_is_shared_across_methods_and_keyed_on_model_and_input(tmp_path, monkeypatch):
    import evalcam.metrics.faithfulness as faithfulness

    calls = []
    real = faithfulness.occlusion_map

    def counting(model, inputs, *args, **kwargs):
        calls.append(inputs.shape[0])
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(faithfulness, "occlusion_map", counting)
    model = ConvToy().eval()
    bundle = toy_bundle(model, (10, 10))
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(7))
    maps_a = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(8))
    maps_b = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(9))

    def score(maps, cache_dir, inputs=x):
        metric = OcclusionFaithfulness(patch_size=4, stride=3, cache_dir=cache_dir)
        return [r["faithfulness.spearman"] for r in metric.update(_batch(bundle, inputs, [1, 4], maps))]

    plain_b = score(maps_b, None)
    assert calls == [2]
    score(maps_a, tmp_path)  # first method: computes and stores both maps
    cached_b = score(maps_b, tmp_path)  # second method: reads them
    assert calls == [2, 2]
    assert cached_b == pytest.approx(plain_b, abs=1e-12)
    assert len(list(tmp_path.rglob("*.pt"))) == 2

    # One image changed: only that one is recomputed.
    x2 = x.clone()
    x2[1, :, 0, 0] += 1.0
    score(maps_b, tmp_path, x2)
    assert calls == [2, 2, 1]
    # Changed weights: nothing is read from the cache (the key hashes the parameters).
    with torch.no_grad():
        model.fc.bias += 1.0
    score(maps_b, tmp_path)
    assert calls == [2, 2, 1, 2]
    # A torn file is recomputed, not trusted.
    for path in tmp_path.rglob("*.pt"):
        path.write_bytes(b"junk")
    score(maps_b, tmp_path)
    assert calls == [2, 2, 1, 2, 2]
