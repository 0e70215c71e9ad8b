"""Occlusion faithfulness (evalcam.metrics.faithfulness) on toy models with known answers, against captum's
Occlusion; its occlusion-map cache."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion
from conftest import ConvToy, LinearToy, assert_merged_halves_equal_one_accumulator, make_batch, toy_bundle

from evalcam.methods.occlusion import occlusion_boxes, patch_origins
from evalcam.metrics.faithfulness import OcclusionFaithfulness, occlusion_map


def _batch(bundle, inputs, classes, maps):
    return make_batch(bundle, inputs, classes, maps, id_prefix="")


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


@pytest.mark.parametrize("make", [lambda: OcclusionFaithfulness(patch_size=4, stride=4)])
def test_merged_halves_equal_one_accumulator(make):
    assert_merged_halves_equal_one_accumulator(make)
