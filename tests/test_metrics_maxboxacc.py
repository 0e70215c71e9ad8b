"""MaxBoxAcc / MaxBoxAccV2 (wsolevaluation protocol) on synthetic maps whose right threshold is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import box_sample, map_batch

from evalcam.metrics.maxboxacc import MaxBoxAcc, best_ious, iou_matrix, quantize, segment_boxes

SIZE = (100, 100)


def _sample(image_id, box, cls=1):
    return box_sample(image_id, cls, box, SIZE)


def _batch(samples, maps, cls=1):
    return map_batch(samples, gt_classes=torch.full((len(samples), 1), cls), gt_maps=maps[:, None])


def _nested():
    """Object [30..59]^2 at 1.0 inside a broad halo [10..89]^2 at 0.3: right threshold 0.30."""
    cam = torch.zeros(SIZE)
    cam[10:90, 10:90] = 0.3
    cam[30:60, 30:60] = 1.0
    return cam


def _distractor():
    """Object [0..19]^2 at 1.0 and a bigger distractor [50..99]^2 at 0.6: the largest segment is wrong
    below 0.6."""
    cam = torch.zeros(SIZE)
    cam[0:20, 0:20] = 1.0
    cam[50:, 50:] = 0.6
    return cam


def test_iou_matrix_counts_inclusive_pixels():
    iou = iou_matrix(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 10, 19, 19]]))
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_segment_boxes_are_tight_and_inclusive_with_sizes():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:3] = True
    mask[5:9, 6:11] = True
    boxes, sizes = segment_boxes(mask)
    assert boxes.tolist() == [[1, 1, 2, 2], [6, 5, 10, 8]]
    assert sizes.tolist() == [4, 20]


def test_quantization_follows_wsolevaluation():
    # uint8(255 * minmax(cam)); the CAM threshold t keeps pixels with value > int(255 t) (cv2 THRESH_BINARY)
    q = quantize(torch.tensor([[0.0, 0.3], [0.6, 1.0]]))
    assert q.tolist() == [[0, 76], [153, 255]]
    assert quantize(torch.full((3, 3), 2.0)) is None
    assert quantize(torch.tensor([[0.0, float("nan")]])) is None


def test_threshold_curve_on_the_nested_map():
    levels = (np.arange(0, 1, 0.01) * 255).astype(np.int64)
    v1, v2 = best_ious(levels, quantize(_nested()), np.array([[30, 30, 59, 59]]))
    thresholds = np.arange(0, 1, 0.01)
    low = thresholds < 0.295
    # wsolevaluation's boxes reach one pixel past a segment's right/bottom edge (cv2 x + w):
    assert np.allclose(v1[low], 900 / 81**2)  # halo box [10..90]^2 vs the 30x30 object
    assert np.allclose(v1[~low], 900 / 31**2)  # object box [30..60]^2
    assert np.array_equal(v1, v2)  # a single segment: V1 and V2 agree


def test_maxboxacc_known_answers():
    samples = [_sample("nested", [30, 30, 59, 59]), _sample("distractor", [0, 0, 19, 19])]
    metric = MaxBoxAcc()
    records = metric.update(_batch(samples, torch.stack([_nested(), _distractor()])))
    out = metric.compute()
    # V1: int(255 t) < 76 -> 0/2, up to level 153 -> 1/2 (the distractor's largest segment wins),
    # t >= 0.60 -> 2/2. The halo quantizes to 76 (uint8(0.3 * 255)); the lowest step-0.001 threshold
    # whose level int(255 t) drops it is 0.299.
    assert out["max_box_acc"] == 1.0
    assert out["best_threshold"] == pytest.approx(0.60)
    # V2 sees every segment: the distractor image is right at every threshold, the nested one from 0.30
    for delta in (30, 50, 70):
        assert out[f"max_box_acc_v2_iou{delta}"] == 1.0
        assert out[f"best_threshold_v2_iou{delta}"] == pytest.approx(0.299)
    assert out["max_box_acc_v2"] == 1.0
    assert out["pairs"] == 2.0 and out["degenerate_maps"] == 0.0
    assert records[0]["maxboxacc.best_iou"] == [pytest.approx(900 / 31**2)]  # box [30..60]^2
    assert records[0]["maxboxacc.best_iou_threshold"] == [pytest.approx(0.299)]


def test_fixed_threshold_reads_the_curve_instead_of_maximizing():
    samples = [_sample("nested", [30, 30, 59, 59]), _sample("distractor", [0, 0, 19, 19])]
    maps = torch.stack([_nested(), _distractor()])
    metric = MaxBoxAcc(fixed_threshold=0.45)
    metric.update(_batch(samples, maps))
    out = metric.compute()
    assert out["threshold_used"] == pytest.approx(0.45)
    assert out["max_box_acc"] == 0.5
    assert out["max_box_acc_v2"] == 1.0
    assert out["best_threshold"] == pytest.approx(0.60)  # still reported, to carry to another split
    low = MaxBoxAcc(fixed_threshold=0.10)
    low.update(_batch(samples, maps))
    assert low.compute()["max_box_acc"] == 0.0
    assert low.compute()["max_box_acc_v2"] == 0.5


def test_iou_thresholds_30_50_70():
    cam = torch.zeros(SIZE)
    cam[:, 0:60] = 1.0  # box [0, 0, 59, 99] vs GT = whole image: IoU 0.6
    metric = MaxBoxAcc()
    metric.update(_batch([_sample("x", [0, 0, 99, 99])], cam[None]))
    out = metric.compute()
    assert out["max_box_acc_v2_iou30"] == 1.0
    assert out["max_box_acc_v2_iou50"] == 1.0
    assert out["max_box_acc_v2_iou70"] == 0.0
    assert out["max_box_acc_v2"] == pytest.approx(2 / 3)
    assert out["max_box_acc"] == 1.0  # V1 is read at IoU 50
    assert out["max_box_acc_iou70"] == 0.0


def test_maps_are_resized_to_the_image():
    cam = torch.zeros(4, 4)
    cam[0:2, 2:4] = 1.0  # top-right quarter of a 4x4 map
    metric = MaxBoxAcc()
    metric.update(_batch([_sample("q", [50, 0, 99, 49])], cam[None]))
    assert metric.compute()["max_box_acc"] == 1.0


@pytest.mark.parametrize("bad", [torch.zeros(SIZE), torch.full(SIZE, float("nan")), torch.full(SIZE, 0.7)])
def test_degenerate_maps_miss_everywhere_and_are_counted(bad):
    metric = MaxBoxAcc()
    metric.update(
        _batch([_sample("z", [0, 0, 99, 99]), _sample("n", [30, 30, 59, 59])], torch.stack([bad, _nested()]))
    )
    out = metric.compute()
    assert out["max_box_acc"] == 0.5
    assert out["degenerate_maps"] == 1.0
    assert not np.isnan(out["max_box_acc_v2"])


def test_merged_halves_equal_one_accumulator():
    samples = [
        _sample("a", [30, 30, 59, 59]),
        _sample("b", [0, 0, 19, 19]),
        _sample("c", [0, 0, 99, 99]),
        _sample("d", [30, 30, 59, 59]),
    ]
    maps = torch.stack([_nested(), _distractor(), _distractor(), torch.zeros(SIZE)])
    whole = MaxBoxAcc()
    whole.update(_batch(samples, maps))
    first, second = MaxBoxAcc(), MaxBoxAcc()
    first.update(_batch(samples[:2], maps[:2]))
    second.update(_batch(samples[2:], maps[2:]))
    first.merge(second)
    assert first.compute() == whole.compute()
