"""The Grad-CAM paper's weak-localization protocol on hand-built maps and boxes with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import box_sample, map_batch

from evalcam.metrics.boxes import box_iou, largest_component_box
from evalcam.metrics.weak_loc import WeakLocalization, best_iou, map_to_box, maps_to_boxes


def test_largest_component_box_picks_the_biggest_segment():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[5:9, 6:11] = True  # 20 px
    assert largest_component_box(mask) == (6, 5, 10, 8)


def test_diagonal_pixels_are_one_segment():
    mask = np.zeros((6, 6), dtype=bool)
    for i in range(4):
        mask[i, i] = True  # a diagonal line: one 8-connected segment of 4 px
    mask[5, 0] = mask[5, 1] = True  # 2 px elsewhere
    assert largest_component_box(mask) == (0, 0, 3, 3)


def test_tie_goes_to_first_segment_in_raster_order():
    mask = np.zeros((8, 8), dtype=bool)
    mask[5:7, 0:2] = True  # 4 px, lower left
    mask[0:2, 5:7] = True  # 4 px, upper right: first in row-major scan
    assert largest_component_box(mask) == (5, 0, 6, 1)


def test_empty_mask_has_no_box():
    assert largest_component_box(np.zeros((4, 4), dtype=bool)) is None


def test_threshold_is_fifteen_percent_of_max():
    cam = torch.zeros(10, 10)
    cam[2:4, 2:4] = 1.0
    cam[6:9, 6:9] = 0.16  # above 15% of max: 9 px, bigger than the peak's 4 px
    assert map_to_box(cam, 0.15) == (6, 6, 8, 8)
    cam[6:9, 6:9] = 0.14  # below: only the peak survives
    assert map_to_box(cam, 0.15) == (2, 2, 3, 3)


@pytest.mark.parametrize("bad", [torch.zeros(5, 5), torch.full((5, 5), float("nan")), -torch.ones(5, 5)])
def test_degenerate_maps_give_no_box(bad):
    assert map_to_box(bad, 0.15) is None


def test_iou_uses_inclusive_pixels():
    box = torch.tensor([0.0, 0.0, 9.0, 9.0])  # 100 px
    others = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0], [10.0, 10.0, 19.0, 19.0]])
    iou = box_iou(box, others)
    assert iou[0] == 1.0
    assert iou[1] == pytest.approx(50 / 150)
    assert iou[2] == 0.0


def _batch(samples, classes, maps):
    return map_batch(samples, pred_classes=classes, pred_maps=maps)


def _sample(image_id, label, box, size=(20, 20)):
    return box_sample(image_id, label, box, size)


def _blob(y0, x0, y1, x1, size=20):
    cam = torch.zeros(size, size)
    cam[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return cam


def test_table1_errors_on_known_cases():
    """Four images whose outcomes are known, checked against the Table 1 definitions."""
    k = 5
    samples = [
        _sample("a", 1, [2, 2, 9, 9]),  # top-1 right class, box right -> all correct
        _sample("b", 2, [2, 2, 9, 9]),  # top-1 right class, box wrong; 2nd guess same class absent
        _sample("c", 3, [10, 10, 19, 19]),  # top-1 wrong class, class 3 at rank 3 with a good box
        _sample("d", 4, [0, 0, 5, 5]),  # class never predicted
    ]
    classes = [[1, 5, 6, 7, 8], [2, 5, 6, 7, 8], [5, 6, 3, 7, 8], [5, 6, 7, 8, 9]]
    maps = torch.zeros(4, k, 20, 20)
    maps[0, 0] = _blob(2, 2, 9, 9)
    maps[1, 0] = _blob(12, 12, 19, 19)
    maps[2, 0] = _blob(10, 10, 19, 19)  # a wrong class's map on the right place does not count
    maps[2, 2] = _blob(10, 10, 19, 19)
    maps[3, :] = _blob(0, 0, 5, 5)
    metric = WeakLocalization(threshold=0.15, iou=0.5, topk=k)
    records = metric.update(_batch(samples, classes, maps))
    out = metric.compute()
    assert out["top1_cls_error"] == pytest.approx(2 / 4)  # c, d
    assert out["top5_cls_error"] == pytest.approx(1 / 4)  # d
    assert out["top1_loc_error"] == pytest.approx(3 / 4)  # only a
    assert out["top5_loc_error"] == pytest.approx(2 / 4)  # a and c localize within top-5
    assert [r["weak_loc.top1_loc_ok"] for r in records] == [True, False, False, False]
    assert records[0]["weak_loc.top1_box"] == [2, 2, 9, 9]
    assert records[0]["weak_loc.top1_iou"] == pytest.approx(1.0)


def test_maps_are_upsampled_to_image_size():
    """A 4x4 map with one hot quadrant on a 40x40 image localizes that quadrant (bilinear upsampling)."""
    sample = _sample("q", 1, [20, 0, 39, 19], size=(40, 40))
    cam = torch.zeros(1, 1, 4, 4)
    cam[0, 0, 0:2, 2:4] = 1.0
    metric = WeakLocalization(topk=1)
    record = metric.update(_batch([sample], [[1]], cam))[0]
    assert record["weak_loc.top1_loc_ok"]
    assert record["weak_loc.top1_iou"] > 0.7


def test_degenerate_map_counts_as_failure_not_nan():
    sample = _sample("z", 1, [0, 0, 9, 9])
    metric = WeakLocalization(topk=1)
    metric.update(_batch([sample], [[1]], torch.full((1, 1, 20, 20), float("nan"))))
    out = metric.compute()
    assert out["top1_loc_error"] == 1.0
    assert out["degenerate_maps"] == 1.0


def test_merged_halves_equal_one_accumulator():
    samples = [_sample(str(i), 1, [2, 2, 9, 9]) for i in range(4)]
    maps = torch.stack([_blob(2, 2, 9, 9), _blob(12, 12, 19, 19), _blob(2, 2, 8, 8), _blob(0, 0, 19, 19)])[
        :, None
    ]
    whole = WeakLocalization(topk=1)
    whole.update(_batch(samples, [[1]] * 4, maps))
    first, second = WeakLocalization(topk=1), WeakLocalization(topk=1)
    first.update(_batch(samples[:2], [[1]] * 2, maps[:2]))
    second.update(_batch(samples[2:], [[1]] * 2, maps[2:]))
    first.merge(second)
    assert first.compute() == whole.compute()
    first.reset()
    assert first.compute()["images"] == 0.0


def test_topk_keys_are_named_after_k():
    """With topk=3 the top-k errors and per-image columns read top3_*, never top5_*; each logged error is
    re-estimated from its own column to the value compute() gave."""
    samples = [
        _sample("a", 1, [2, 2, 9, 9]),
        _sample("c", 3, [10, 10, 19, 19]),
        _sample("d", 4, [0, 0, 5, 5]),
    ]
    maps = torch.zeros(3, 3, 20, 20)
    maps[0, 0] = _blob(2, 2, 9, 9)
    maps[1, 2] = _blob(10, 10, 19, 19)  # class 3 at rank 3: a top-3 localization
    maps[2, :] = _blob(0, 0, 5, 5)
    metric = WeakLocalization(topk=3)
    records = metric.update(_batch(samples, [[1, 5, 6], [5, 6, 3], [5, 6, 7]], maps))
    out = metric.compute()
    assert out["top3_loc_error"] == pytest.approx(1 / 3) and out["top3_cls_error"] == pytest.approx(1 / 3)
    assert out["top1_loc_error"] == pytest.approx(2 / 3)
    assert not any(k.startswith("top5") for k in out) and set(metric.higher_is_better) < set(out)
    assert [r["weak_loc.top3_loc_ok"] for r in records] == [True, True, False]
    assert not any("top5" in k for r in records for k in r)
    table = pd.DataFrame(records)
    aggregations = metric.aggregations(out)
    assert set(aggregations) == set(metric.higher_is_better)
    for key, aggregation in aggregations.items():
        sums = aggregation.contributions(table).sum(0)
        assert float(aggregation.value(sums)) == pytest.approx(out[key]), key
    assert set(WeakLocalization().higher_is_better) == {
        "top1_loc_error",
        "top5_loc_error",
        "top1_cls_error",
        "top5_cls_error",
    }


def test_boxes_of_a_stack_equal_map_by_map():
    """maps_to_boxes (one threshold and labelling pass) gives map_to_box's box for every map, degenerate
    ones (NaN, Inf, all <= 0, constant) included."""
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(12, 30, 40, generator=g)
    cams[1] = (cams[1] * 3).floor()  # plateaus: ties between segments
    cams[2] = float("nan")
    cams[3, 4, 5] = float("inf")
    cams[4] = -cams[4]
    cams[5] = 0.25
    cams[6, 7, 8] = float("nan")
    for threshold in (0.15, 0.5, 0.95):
        assert maps_to_boxes(cams, threshold) == [map_to_box(cam, threshold) for cam in cams]
    assert maps_to_boxes(cams[:0], 0.15) == []


def test_best_iou_is_box_iou_to_the_last_bit():
    g = torch.Generator().manual_seed(1)
    for _ in range(500):
        x0, x1 = sorted(torch.randint(0, 300, (2,), generator=g).tolist())
        y0, y1 = sorted(torch.randint(0, 300, (2,), generator=g).tolist())
        gt = torch.rand(3, 4, generator=g, dtype=torch.float64) * 300
        gt[:, 2:] = gt[:, :2] + torch.rand(3, 2, generator=g, dtype=torch.float64) * 200
        want = float(box_iou(torch.tensor([x0, y0, x1, y1], dtype=torch.float32), gt.float()).max())
        assert best_iou((x0, y0, x1, y1), gt) == want
    assert best_iou(None, gt) == 0.0 and best_iou((0, 0, 1, 1), torch.zeros(0, 4)) == 0.0


def test_a_batch_of_mixed_sizes_equals_image_by_image():
    """Records and counts of one batch (images of two sizes, several ground-truth classes in the top-5,
    flat and NaN maps) equal those of the same images one at a time."""
    g = torch.Generator().manual_seed(2)
    sizes = [(20, 20), (31, 17), (20, 20), (31, 17), (20, 20), (20, 20)]
    samples = [_sample(str(i), 1 + i % 3, [2, 1, 12, 15], size=size) for i, size in enumerate(sizes)]
    samples[4].labels.append(7)
    samples[4].boxes[7] = torch.tensor([[0.5, 0.0, 19.0, 10.25]])
    classes = [
        [1, 5, 6, 7, 8],
        [5, 2, 6, 7, 8],
        [3, 5, 1, 7, 8],
        [5, 6, 7, 8, 9],
        [2, 7, 1, 3, 8],
        [1, 2, 3, 4, 5],
    ]
    maps = torch.rand(6, 5, 5, 5, generator=g)
    maps[0, 0] = 0.5  # flat
    maps[4, 1] = float("nan")
    whole = WeakLocalization()
    records = whole.update(_batch(samples, classes, maps))
    single = WeakLocalization()
    one_by_one = [
        single.update(_batch([s], [c], maps[i : i + 1]))[0]
        for i, (s, c) in enumerate(zip(samples, classes, strict=True))
    ]
    assert records == one_by_one
    assert whole.state_dict().keys() == single.state_dict().keys()
    assert all(torch.equal(whole.state_dict()[k], single.state_dict()[k]) for k in whole.state_dict())
