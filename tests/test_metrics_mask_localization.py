"""Complexity, mask-localisation and Focus accumulators: known answers on real COCO masks, degenerate maps
counted (never NaN), per-image records, batching invariance, one-line refusals, and Focus on real ILSVRC
images with EfficientNet-Lite0."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import map_batch, shared_subdir

from evalcam.data import build_dataset
from evalcam.data.types import Sample
from evalcam.metrics import build_metrics, mask_localization
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.complexity import Complexity, EffectiveComplexity, Sparseness
from evalcam.metrics.focus import Focus, build_mosaics, plan_mosaics
from evalcam.metrics.mask_localization import (
    AttributionLocalisation,
    MaskAUC,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)
from evalcam.runner import check_compatible

MASK_METRICS = [
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    AttributionLocalisation,
    TopKIntersection,
    MaskAUC,
]


def _batch(samples, gt_maps, gt_classes, pred_maps=None, inputs_size=(8, 8)) -> EvalBatch:
    return map_batch(
        samples, pred_maps=pred_maps, gt_classes=gt_classes, gt_maps=gt_maps, inputs_size=inputs_size
    )


SMALL = (60, 80)


@pytest.fixture(scope="module")
def coco():
    """Four real COCO val2017 images with their class masks, shrunk to 60 x 80 (nearest) to keep the tests
    fast; the mask shapes stay the annotators'."""
    dataset = build_dataset("coco2017", root=shared_subdir("coco_val2017_mini"), limit=4)
    samples = []
    for i in range(len(dataset)):
        s = dataset[i]
        small = {
            c: F.interpolate(m[None, None].float(), size=SMALL, mode="nearest")[0, 0] > 0
            for c, m in s.masks.items()
        }
        image = F.interpolate(s.image[None].float(), size=SMALL, mode="bilinear")[0].to(torch.uint8)
        samples.append(Sample(image=image, image_id=s.image_id, labels=list(s.labels), masks=small))
    return samples


def _mask_maps(samples, invert=False):
    """GT maps equal to each class's own mask (or its complement), at image size, padded to one size."""
    width = max(len(s.labels) for s in samples)
    h = max(s.size[0] for s in samples)
    w = max(s.size[1] for s in samples)
    maps = torch.zeros(len(samples), width, h, w)
    classes = []
    for i, s in enumerate(samples):
        for j, c in enumerate(s.labels):
            m = s.masks[c].float()
            maps[i, j, : s.size[0], : s.size[1]] = 1 - m if invert else m
        classes.append(s.labels + [-1] * (width - len(s.labels)))
    return maps, classes


def _per_image_mean(samples, pair_score) -> float:
    """Mean over images of the mean over classes of ``pair_score(mask pixels, image pixels)``."""
    per_image = []
    for sample in samples:
        sizes = [int(sample.masks[c].sum()) for c in sample.labels if sample.masks[c].any()]
        n = sample.size[0] * sample.size[1]
        per_image.append(sum(pair_score(m, n) for m in sizes) / len(sizes))
    return sum(per_image) / len(per_image)


def test_mask_maps_score_perfectly_and_their_complement_scores_zero(coco):
    # Maps are at image size already, so bilinear resampling to Sample.size is the identity.
    assert {s.size for s in coco} == {SMALL}
    maps, classes = _mask_maps(coco)
    inverse, _ = _mask_maps(coco, invert=True)
    for cls in MASK_METRICS:
        params = {"k": 50} if cls is TopKIntersection else {}
        good, bad = cls(**params), cls(**params)
        records = good.update(_batch(coco, maps, classes))
        bad.update(_batch(coco, inverse, classes))
        key = good.key
        g, b = good.compute(), bad.compute()
        pairs = sum(len(s.labels) for s in coco)
        assert g["evaluated"] + g["skipped"] == pairs
        assert g["degenerate_maps"] == 0
        if cls is TopKIntersection:  # a mask under k pixels cannot fill the top k
            assert g[key] == pytest.approx(_per_image_mean(coco, lambda m, n: min(m, 50) / 50))
            assert g[key] < 1
        else:
            assert g[key] == pytest.approx(1.0), cls.name
        if cls is RelevanceRankAccuracy:
            # The |mask| best pixels of the complement: all background first, then mask pixels (a mask
            # larger than the background must lend some), so the score is max(0, |m| - |bg|) / |m| per pair.
            assert b[key] == pytest.approx(_per_image_mean(coco, lambda m, n: max(0, 2 * m - n) / m))
            assert b[key] > 0  # one mini image has a mask over half the image
        else:
            assert b[key] == pytest.approx(0.0), cls.name
        if cls is not TopKIntersection:
            assert [r[f"{good.name}.{key}"] for r in records] == pytest.approx([1.0] * len(coco))
        assert records[0][f"{good.name}.classes"] == coco[0].labels


def test_known_fractions_on_a_hand_built_mask():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:, :5] = True  # left half
    sample = Sample(
        image=torch.zeros(3, 10, 10, dtype=torch.uint8), image_id="a", labels=[1], masks={1: mask}
    )
    cam = torch.zeros(1, 1, 10, 10)
    cam[0, 0, :, :5] = 3.0  # left half
    cam[0, 0, :, 5:] = 1.0  # right half
    cam[0, 0, 0, 9] = -50.0  # negative relevance is not relevance mass
    batch = _batch([sample], cam, [[1]])
    assert RelevanceMassAccuracy().update(batch)[0]["relevance_mass.accuracy"] == pytest.approx(150 / 199)
    weighted = AttributionLocalisation(weighted=True).update(batch)[0]["attribution_localisation.ratio"]
    assert weighted == pytest.approx(150 / 199 * 2)
    assert RelevanceRankAccuracy().update(batch)[0]["relevance_rank.accuracy"] == 1.0
    assert TopKIntersection(k=60).update(batch)[0]["topk_intersection.intersection"] == pytest.approx(50 / 60)
    # AUC: every mask pixel above every background pixel
    assert MaskAUC().update(batch)[0]["mask_auc.auc"] == 1.0
    # max_size: a mask covering half the image is skipped at 0.4
    small = AttributionLocalisation(max_size=0.4)
    assert small.update(batch)[0]["attribution_localisation.ratio"] is None
    out = small.compute()
    assert math.isnan(out["ratio"])  # nothing scored: no number, not a plausible 0
    assert {k: v for k, v in out.items() if k != "ratio"} == {
        "images": 0.0,
        "evaluated": 0.0,
        "skipped": 1.0,
        "degenerate_maps": 0.0,
    }
    (why,) = small.notes(out).values()
    assert why.startswith("no pair scored: all 1 (image, class) pair(s) were skipped")


@pytest.mark.parametrize("bad", ["constant", "nan", "negative", "zero"])
def test_degenerate_maps_are_counted_and_never_nan(coco, bad):
    maps, classes = _mask_maps(coco[:2])
    raw = {
        "constant": torch.full_like(maps[0, 0], 0.7),
        "nan": torch.full_like(maps[0, 0], float("nan")),
        "negative": -torch.rand_like(maps[0, 0]),
        "zero": torch.zeros_like(maps[0, 0]),
    }[bad]
    maps[0, 0] = raw
    for cls in MASK_METRICS:
        params = {"k": 50} if cls is TopKIntersection else {}
        metric = cls(**params)
        records = metric.update(_batch(coco[:2], maps, classes))
        out = metric.compute()
        assert out["degenerate_maps"] == 1.0, cls.name
        assert not any(math.isnan(v) for v in out.values())
        expected = 0.5 if cls is MaskAUC else 0.0
        assert records[0][f"{metric.name}.per_class"][0] == expected
    pred = torch.rand(3, 1, 4, 4)
    pred[1, 0] = raw[:4, :4]
    for cls in (Sparseness, Complexity, EffectiveComplexity):
        metric = cls()
        records = metric.update(_batch(coco[:3], None, [[0]] * 3, pred_maps=pred, inputs_size=(16, 16)))
        out = metric.compute()
        assert out["degenerate_maps"] == 1.0 and records[1][f"{metric.name}.degenerate"] is True
        assert not any(math.isnan(v) for v in out.values())
    # a degenerate map scores what a uniform map scores
    complexity = Complexity()
    records = complexity.update(_batch(coco[:3], None, [[0]] * 3, pred_maps=pred, inputs_size=(16, 16)))
    assert records[1]["complexity.entropy"] == pytest.approx(math.log(256))


def test_complexity_known_values_and_resolution():
    pred = torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, 0] = 1.0  # one pixel
    pred[1, 0] = torch.arange(16.0).reshape(4, 4)
    batch = _batch([None, None], None, [[0], [0]], pred_maps=pred, inputs_size=(16, 16))
    native = Sparseness(upsample=False).update(batch)
    assert native[0]["sparseness.gini"] == pytest.approx(1 - 1 / 16)
    upsampled = Sparseness().update(batch)
    assert upsampled[0]["sparseness.gini"] < native[0]["sparseness.gini"]  # bilinear spreads the peak
    count = EffectiveComplexity(upsample=False, eps=0.5).update(batch)
    assert count[1]["effective_complexity.count"] == 8  # values 9..15 are > 0.5 * 15, and 8 > 7.5
    assert count[1]["effective_complexity.fraction"] == 0.5
    with pytest.raises(ValueError, match=r"^metrics.effective_complexity.eps=2 must lie in \[0, 1\)"):
        EffectiveComplexity(eps=2)


def test_states_merge_like_one_batch(coco):
    maps, classes = _mask_maps(coco)
    maps = maps + 0.1 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(1))
    whole, first, second = RelevanceRankAccuracy(), RelevanceRankAccuracy(), RelevanceRankAccuracy()
    whole.update(_batch(coco, maps, classes))
    first.update(_batch(coco[:2], maps[:2], classes[:2]))
    second.update(_batch(coco[2:], maps[2:], classes[2:]))
    first.merge(second)
    assert first.compute() == pytest.approx(whole.compute())


def test_box_only_datasets_are_refused_unless_boxes_are_allowed():
    class BoxOnly:
        name = "voc2007"
        has_masks = False
        class_names = ["a"] * 20

    class Bundle:
        name = "net"
        categories = ["a"] * 20  # the dataset's label space: only the box/mask check is under test

    metrics = build_metrics({"relevance_mass": {}, "sparseness": {}}, "cpu")
    with pytest.raises(ValueError) as err:
        check_compatible(metrics, BoxOnly(), Bundle())
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("metric(s) relevance_mass need segmentation masks, but dataset voc2007")
    assert "boxes_as_masks=true" in str(err.value)
    check_compatible(build_metrics({"relevance_mass": {"boxes_as_masks": True}}, "cpu"), BoxOnly(), Bundle())

    class OtherHead:
        name = "net1000"
        categories = ["c"] * 1000

    # The metric explains ground-truth classes: on a head with other classes it is refused too.
    refusal = r"relevance_mass score the 20 classes of voc2007, but model net1000"
    with pytest.raises(ValueError, match=refusal):
        check_compatible(
            build_metrics({"relevance_mass": {"boxes_as_masks": True}}, "cpu"), BoxOnly(), OtherHead()
        )
    # used directly on a box-annotated sample, the metric refuses too
    sample = Sample(
        image=torch.zeros(3, 10, 10, dtype=torch.uint8),
        image_id="v",
        labels=[1],
        boxes={1: torch.tensor([[0.0, 0.0, 4.0, 9.0]])},
        difficult={1: torch.tensor([False])},
    )
    cam = torch.zeros(1, 1, 10, 10)
    cam[0, 0, :, :5] = 1.0
    with pytest.raises(
        ValueError, match=r"^relevance_mass needs segmentation masks but image v has boxes only"
    ):
        RelevanceMassAccuracy().update(_batch([sample], cam, [[1]]))
    boxes = RelevanceMassAccuracy(boxes_as_masks=True).update(_batch([sample], cam, [[1]]))
    assert boxes[0]["relevance_mass.accuracy"] == 1.0


def test_topk_larger_than_the_image_is_refused(coco):
    maps, classes = _mask_maps(coco[:1])
    pixels = coco[0].size[0] * coco[0].size[1]
    with pytest.raises(
        ValueError, match=rf"^metrics.topk_intersection.k={pixels + 1} is larger than the {pixels}"
    ):
        TopKIntersection(k=pixels + 1).update(_batch(coco[:1], maps, classes))


def test_mosaic_plans_are_seeded_per_image_and_use_other_labels():
    labels = [[1], [2], [3], [1], [4]]
    ids = ["a", "b", "c", "d", "e"]
    plans = plan_mosaics(labels, ids, seed=0)
    assert plans == plan_mosaics(labels, ids, seed=0)
    assert plans != plan_mosaics(labels, ids, seed=1)
    for i, (tiles, flags) in enumerate(plans):
        target = labels[i][0]
        assert sorted(flags) == [0, 0, 1, 1]
        assert all((target in labels[t]) == bool(f) for t, f in zip(tiles, flags, strict=True))
        assert i in tiles
    assert sorted(plans[0][0]) != [0, 0] and 3 in plans[0][0]  # the other label-1 image is the partner
    assert plans[1][0].count(1) == 2  # no other label-2 image: the anchor twice
    assert plan_mosaics([[1], [2], [1]], ["a", "b", "c"], 0)[0] is None  # one other-label image only
    inputs = torch.arange(5.0)[:, None, None, None].expand(5, 3, 8, 8)
    mosaic = build_mosaics(inputs, [plans[0]])[0]
    assert mosaic.shape == (3, 8, 8)
    assert [
        mosaic[0, 0, 0].item(),
        mosaic[0, 0, 7].item(),
        mosaic[0, 7, 0].item(),
        mosaic[0, 7, 7].item(),
    ] == [float(t) for t in plans[0][0]]


def test_focus_on_real_images_gradcam_prefers_the_target_tiles(lite0):
    from evalcam.methods import build_explainer
    from evalcam.pipeline import explain_batch

    dataset = build_dataset(
        "imagenet_val",
        root=shared_subdir("imagenet_val_227/ILSVRC2012_VAL_SET"),
        annotations=shared_subdir("imagenet_meta/wsolevaluation_ILSVRC_test"),
        limit=4,
    )
    samples = [dataset[i] for i in range(len(dataset))]
    inputs = lite0.preprocess([s.image for s in samples], lite0.device)
    out = {}
    for method in ("gradcam", "center"):
        batch = explain_batch(samples, inputs, lite0, build_explainer(method, lite0), 1, need_gt=False)
        metric = Focus(seed=0)
        records = metric.update(batch)
        out[method] = metric.compute()
        assert all(r["focus.tiles"] is not None and len(r["focus.tiles"]) == 4 for r in records)
    assert out["gradcam"]["images"] == 4 and out["gradcam"]["skipped"] == 0
    # A centred blob straddles all four tiles equally; Grad-CAM follows the target images.
    assert out["center"]["focus"] == pytest.approx(0.5, abs=0.02)
    assert out["gradcam"]["focus"] > 0.6


def test_latec_experiment_dry_run_and_lite_profile_compose(capsys):
    from pathlib import Path

    from evalcam.cli import main
    from evalcam.experiments import compose_many, load_experiment, sweep_overrides

    folder = Path(__file__).resolve().parents[1] / "experiments"
    main(["experiment", "latec_families", "--profile", "lite", "--dry-run", "--experiments-dir", str(folder)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    assert all("focus" in line and "metrics.mask_auc.boxes_as_masks=true" in line for line in lines)
    spec = load_experiment("latec_families", folder)
    configs = compose_many(sweep_overrides(spec, "lite")[:2])
    assert configs[0]["metrics"]["relevance_mass"] == {"boxes_as_masks": True}
    # One batch of all the images: Focus mosaics and sufficiency neighbours come from the batch.
    assert configs[0]["dataset"]["limit"] == 10 and configs[0]["batch_size"] == 10
    assert configs[0]["metrics"]["pixel_flipping"]["steps"] == 16


@pytest.mark.parametrize("bad", ["zeros", "constant", "nan", "negative"])
def test_focus_counts_degenerate_mosaic_maps(bad):
    from evalcam.methods.base import Explainer, Explanation

    class GivenMaps(Explainer):
        """Map ``i`` for mosaic ``i``, whatever the input (so a degenerate map stays degenerate)."""

        def __init__(self, maps: torch.Tensor) -> None:
            self.maps = maps

        def explain(self, images, targets) -> Explanation:
            n = images.shape[0]
            return Explanation(maps=self.maps[:n, None], logits=torch.zeros(n, 10), classes=targets)

    samples = [
        Sample(image=torch.zeros(3, 8, 8, dtype=torch.uint8), image_id=f"i{k}", labels=[k]) for k in range(4)
    ]
    maps = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(0))
    maps[0] = {
        "zeros": torch.zeros(4, 4),
        "constant": torch.full((4, 4), 0.3),
        "nan": maps[0].masked_fill(maps[0] > 0.5, float("nan")),
        "negative": -maps[0],
    }[bad]
    batch = _batch(samples, None, [[0]] * 4, inputs_size=(16, 16))
    batch.explainer = GivenMaps(maps)
    metric = Focus()
    records = metric.update(batch)
    out = metric.compute()
    assert out["degenerate_maps"] == 1 and out["images"] == 4
    assert records[0]["focus.focus"] == 0.5 and records[0]["focus.degenerate"] is True
    assert not any(math.isnan(v) for v in out.values())
    assert all(0 <= r["focus.focus"] <= 1 for r in records)


@pytest.mark.parametrize("chunk_pixels", [None, 2 * SMALL[0] * SMALL[1]])
def test_images_of_different_sizes_in_one_batch_score_as_one_at_a_time(coco, monkeypatch, chunk_pixels):
    # The accumulator resamples and scores the images of one size together (in chunks of at most
    # _CHUNK_PIXELS, here also 2 maps): interleaved sizes, a degenerate map and a skipped (empty-region)
    # class must land on the right image and class.
    if chunk_pixels is not None:
        monkeypatch.setattr(mask_localization, "_CHUNK_PIXELS", chunk_pixels)
    big = []
    for s in coco[:2]:
        masks = {
            c: F.interpolate(m[None, None].float(), size=(72, 96), mode="nearest")[0, 0] > 0
            for c, m in s.masks.items()
        }
        big.append(
            Sample(
                image=torch.zeros(3, 72, 96, dtype=torch.uint8),
                image_id=s.image_id + "b",
                labels=list(s.labels),
                masks=masks,
            )
        )
    samples = [coco[0], big[0], coco[1], big[1]]
    width = max(len(s.labels) for s in samples)
    classes = [s.labels + [-1] * (width - len(s.labels)) for s in samples]
    maps = torch.rand(4, width, 6, 8, generator=torch.Generator().manual_seed(2))
    maps[2, 0] = 0.0  # degenerate
    empty = dict(samples[1].masks)
    empty[samples[1].labels[0]] = torch.zeros(72, 96, dtype=torch.bool)  # no region: skipped
    samples[1] = Sample(image=samples[1].image, image_id="empty", labels=samples[1].labels, masks=empty)
    for cls in MASK_METRICS:
        params = {"k": 50} if cls is TopKIntersection else {}
        together = cls(**params)
        records = together.update(_batch(samples, maps, classes))
        alone = [cls(**params) for _ in samples]
        expected = [
            m.update(_batch([s], maps[i : i + 1], classes[i : i + 1]))[0]
            for i, (m, s) in enumerate(zip(alone, samples, strict=True))
        ]
        assert records == expected, cls.name
        for other in alone[1:]:
            alone[0].merge(other)
        assert together.compute() == pytest.approx(alone[0].compute())
        assert together.compute()["degenerate_maps"] == 1 and together.compute()["skipped"] >= 1


def test_focus_without_a_mosaic_logs_no_number_and_says_why():
    # Three images of two classes: no image has two images without its label in the batch.
    samples = [
        Sample(image=torch.zeros(3, 8, 8, dtype=torch.uint8), image_id=f"i{k}", labels=labels)
        for k, labels in enumerate([[1], [1, 2], [2]])
    ]
    metric = Focus()
    records = metric.update(_batch(samples, None, [[0]] * 3, inputs_size=(16, 16)))
    assert [r["focus.focus"] for r in records] == [None, None, None]
    out = metric.compute()
    assert math.isnan(out["focus"])  # not 0.0: no mosaic was scored
    assert out["images"] == 0 and out["skipped"] == 3
    assert metric.notes(out) == {
        "focus": "no mosaic: none of the 3 image(s) had a label and two images in its batch without that "
        "label (e.g. batches of 1 image or of 2 classes); use a larger batch_size"
    }


def test_a_run_without_a_focus_mosaic_logs_no_focus_value_and_notes_why(tmp_path):
    import json

    from conftest import config_for

    from evalcam.runner import run

    # chelsea and coffee: each has one other-label image in its batch, a mosaic needs two.
    config = config_for(
        tmp_path / "runs", "method=gradcam", "dataset=sample", "dataset.limit=2", "batch_size=2",
        "metrics=[focus]", "device=cpu",
    )  # fmt: skip
    result = run(config)
    assert math.isnan(result.metrics["focus/focus"]) and result.metrics["focus/skipped"] == 2
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert math.isnan(summary["metrics"]["focus/focus"])
    assert summary["notes"]["focus/focus"].startswith("no mosaic: none of the 2 image(s)")
    assert result.notes == summary["notes"]
