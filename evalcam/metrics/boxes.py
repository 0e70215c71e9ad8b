"""Boxes, IoU and the largest connected component, in the inclusive pixel-index convention."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# 8-connectivity: diagonal neighbours belong to the same segment (scikit-image's default for 2-D).
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# The same 8-connectivity within each plane of a [N, H, W] stack and none across planes: one labelling
# pass boxes every map of a batch, each exactly as on its own.
PLANE_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
PLANE_EIGHT_CONNECTED[1] = True

Box = tuple[int, int, int, int]


def largest_component_box(mask: np.ndarray) -> Box | None:
    """Bounding box ``(x0, y0, x1, y1)`` (inclusive) of the largest 8-connected segment of ``mask``.

    Ties between equally large segments go to the one that appears first in raster order (row-major
    scan), so the result is deterministic. Returns ``None`` for an empty mask.
    """
    return largest_component_boxes(mask[None])[0]


def largest_component_boxes(masks: np.ndarray) -> list[Box | None]:
    """:func:`largest_component_box` of each ``[H, W]`` plane of ``masks`` ``[N, H, W]``, in one pass.

    ``ndimage.label`` numbers segments in raster order of the stack, so each plane's segments hold a
    contiguous run of labels in the order a 2-D labelling of that plane gives them: the lowest label among
    equally large ones is still the first in the plane's raster order.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[0] == 0:
        return []
    labels, count = ndimage.label(masks, structure=PLANE_EIGHT_CONNECTED)
    if count == 0:
        return [None] * masks.shape[0]
    last = np.maximum.accumulate(labels.reshape(masks.shape[0], -1).max(1))  # each plane's highest label
    boxes: list[Box | None] = []
    first = 1
    for plane, stop in enumerate(last.tolist()):
        if stop < first:  # no segment in this plane
            boxes.append(None)
            continue
        if stop == first:  # one segment (the usual case for a CAM): the mask is that segment
            segment = masks[plane]
        else:
            sizes = np.bincount(labels[plane].ravel(), minlength=stop + 1)[first:]
            # argmax picks the lowest label among ties = first in raster order
            segment = labels[plane] == first + int(np.argmax(sizes))
        ys, xs = np.flatnonzero(segment.any(1)), np.flatnonzero(segment.any(0))
        boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])))
        first = stop + 1
    return boxes


def iou_matrix(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU ``[K, G]`` of inclusive boxes (areas count pixels: ``(x1 - x0 + 1) * (y1 - y0 + 1)``)."""
    ix0 = np.maximum(boxes[:, None, 0], gt[None, :, 0])
    iy0 = np.maximum(boxes[:, None, 1], gt[None, :, 1])
    ix1 = np.minimum(boxes[:, None, 2], gt[None, :, 2])
    iy1 = np.minimum(boxes[:, None, 3], gt[None, :, 3])
    inter = np.clip(ix1 - ix0 + 1, 0, None) * np.clip(iy1 - iy0 + 1, 0, None)
    area_a = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_b = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


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
