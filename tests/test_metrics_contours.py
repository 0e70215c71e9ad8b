"""wsolevaluation's boxes (cv2.findContours RETR_TREE + boundingRect, ``x + w`` clipped) re-derived from the
contour rules, on fixed maps with holes, thin segments, ties and segments touching the borders.

The expected boxes are written out by hand from the rules in :mod:`evalcam.metrics.contours`: outer
contour box = segment box with right/bottom edge + 1, clipped to ``W - 1`` / ``H - 1``; hole contour box
= hole box grown by one pixel on every side, then the same; V1 = largest polygon area through pixel
centres, OpenCV's list order (reverse raster order at the top level) on ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import box_sample, map_batch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.contours import contour_boxes, outer_contour_area
from evalcam.metrics.maxboxacc import MaxBoxAcc


def _ring_map() -> np.ndarray:
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:6, 1:6] = True  # segment A, 5x5 ...
    mask[3, 2:4] = False  # ... with a 2x1 hole
    mask[6:10, 8:12] = True  # segment B touches the right and bottom borders
    mask[8, 0:3] = True  # segment C: a line on the left border
    return mask


def test_boxes_of_outer_and_hole_contours_follow_the_reference_convention():
    boxes, v1 = contour_boxes(_ring_map())
    assert sorted(boxes.tolist()) == sorted(
        [
            [1, 1, 6, 6],  # A: pixels 1..5, box to 5 + 1
            [1, 2, 5, 5],  # A's hole: pixels x 2..3, y 3 -> grown [1, 2, 4, 4] -> + 1
            [8, 6, 11, 9],  # B: 8..11 x 6..9, clipped at the image's last column/row
            [0, 8, 3, 9],  # C: 0..2 x 8
        ]
    )
    assert boxes[v1].tolist() == [1, 1, 6, 6]  # A's polygon (16) beats B's (9) and the line's (0)


def test_contour_area_is_the_polygon_through_pixel_centres_not_the_pixel_count():
    mask = np.zeros((8, 40), dtype=bool)
    mask[1, 1:31] = True  # 30 pixels, polygon area 0
    mask[4:7, 34:37] = True  # 9 pixels, polygon area 2 x 2
    boxes, v1 = contour_boxes(mask)
    assert boxes[v1].tolist() == [34, 4, 37, 7]
    padded = np.pad(mask, 1)
    assert outer_contour_area(padded, 2, 2) == 0.0
    assert outer_contour_area(padded, 5, 35) == 4.0
    diamond = np.pad(np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool), 1)
    assert outer_contour_area(diamond, 1, 2) == 2.0


def test_ties_go_to_the_last_segment_in_raster_order():
    mask = np.zeros((9, 9), dtype=bool)
    mask[0:3, 0:3] = True
    mask[5:8, 5:8] = True
    boxes, v1 = contour_boxes(mask)
    assert boxes[v1].tolist() == [5, 5, 8, 8]  # OpenCV lists top-level contours bottom-up


def test_an_empty_map_has_no_box():
    boxes, v1 = contour_boxes(np.zeros((4, 4), dtype=bool))
    assert boxes.shape == (0, 4) and v1 == -1


def _batch(mask: np.ndarray, gt_box: list[int]) -> EvalBatch:
    sample = box_sample("ring", 1, gt_box, mask.shape)
    gt_maps = torch.from_numpy(mask.astype(np.float32))[None, None]
    return map_batch([sample], gt_classes=[[1]], gt_maps=gt_maps)


def test_v2_scores_the_hole_contour_like_the_reference():
    # GT = A's hole box: only the hole contour matches it exactly; V1 (A's outer box [1, 1, 6, 6], area
    # 36) overlaps it by 5 x 4 = 20 pixels: IoU 20 / 36.
    metric = MaxBoxAcc()
    records = metric.update(_batch(_ring_map(), [1, 2, 5, 5]))
    out = metric.compute()
    assert records[0]["maxboxacc.best_iou"] == [pytest.approx(20 / 36)]
    assert out["max_box_acc"] == 1.0
    assert out["max_box_acc_iou70"] == 0.0
    assert out["max_box_acc_v2_iou70"] == 1.0
    assert len(metric.thresholds) == 1000  # wsolevaluation's cam_curve_interval=0.001
