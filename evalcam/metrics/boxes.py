"""Boxes, IoU and the largest connected component, in the inclusive pixel-index convention."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# 8-connectivity: diagonal neighbours belong to the same segment (scikit-image's default for 2-D).
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def largest_component_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (inclusive) of the largest 8-connected segment of ``mask``.

    Ties between equally large segments go to the one that appears first in raster order (row-major
    scan), so the result is deterministic. Returns ``None`` for an empty mask.
    """
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    biggest = int(np.argmax(sizes))  # argmax picks the lowest label among ties = first in raster order
    ys, xs = np.nonzero(labels == biggest)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def box_iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one ``[4]`` box against ``[N, 4]`` boxes; inclusive corners, so a box has area >= 1."""
    box = box.to(boxes.dtype)
    ix0 = torch.maximum(box[0], boxes[:, 0])
    iy0 = torch.maximum(box[1], boxes[:, 1])
    ix1 = torch.minimum(box[2], boxes[:, 2])
    iy1 = torch.minimum(box[3], boxes[:, 3])
    inter = (ix1 - ix0 + 1).clamp_min(0) * (iy1 - iy0 + 1).clamp_min(0)
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / (area + areas - inter)
