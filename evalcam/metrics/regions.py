"""Ground-truth regions of a class in a :class:`~evalcam.data.types.Sample`, and the pointing-game test.

Conventions follow TorchRay's ``benchmark/datasets.py`` and ``benchmark/pointing_game.py``
(Fong, Patrick & Vedaldi's reference implementation of Zhang et al.'s pointing game):

- the region of a class is its segmentation mask when the dataset has one (COCO), otherwise the union of
  *all* its boxes, PASCAL-difficult ones included (``voc_as_mask``); boxes are inclusive pixel indices,
  fractional corners (boxes rescaled onto a resized image) rounded to the nearest pixel;
- a class whose boxes are all PASCAL-difficult is not evaluated at all (TorchRay applies this to VOC's
  boxes only; a class with a mask, e.g. a COCO class annotated only as crowd, is always evaluated);
- a point hits when some region pixel lies at Euclidean distance *strictly* below the tolerance
  (``(dx**2 + dy**2) < tolerance**2``), so a pixel exactly 15 px away is a miss with the default 15.
"""

from __future__ import annotations

import torch

from evalcam.data.types import Sample


def clipped_boxes(boxes: torch.Tensor, size: tuple[int, int], rounded: bool = True) -> torch.Tensor:
    """Inclusive ``[N, 4]`` boxes clipped to an ``(H, W)`` image, boxes wholly outside it dropped.

    ``rounded``: snap fractional corners (boxes rescaled onto a resized image) to the nearest pixel index
    and return integers, as a pixel mask needs; otherwise keep float corners (for IoU).
    """
    height, width = size
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).long() if rounded else boxes.reshape(0, 4).double()
    b = boxes.double().round() if rounded else boxes.double().clone()
    inside = (b[:, 2] >= 0) & (b[:, 3] >= 0) & (b[:, 0] <= width - 1) & (b[:, 1] <= height - 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, width - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, height - 1)
    keep = inside & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
    return b[keep].long() if rounded else b[keep]


def class_mask(sample: Sample, cls: int) -> torch.Tensor:
    """Bool ``[H, W]`` region of ``cls``: its mask if the dataset has masks, else the union of its boxes."""
    if sample.masks is not None and cls in sample.masks:
        return sample.masks[cls].bool().cpu()
    mask = torch.zeros(sample.size, dtype=torch.bool)
    for x0, y0, x1, y1 in clipped_boxes(sample.boxes.get(cls, torch.zeros(0, 4)), sample.size).tolist():
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def has_region(sample: Sample, cls: int) -> bool:
    if sample.masks is not None and cls in sample.masks:
        return bool(sample.masks[cls].any())
    return len(clipped_boxes(sample.boxes.get(cls, torch.zeros(0, 4)), sample.size)) > 0


def all_difficult(sample: Sample, cls: int) -> bool:
    """True when ``cls`` has boxes and every one is PASCAL-difficult (TorchRay skips such classes)."""
    flags = sample.difficult.get(cls)
    return flags is not None and flags.numel() > 0 and bool(flags.all())


def not_evaluated(sample: Sample, cls: int) -> bool:
    """TorchRay skips a class with no region, and a box-annotated class whose boxes are all difficult."""
    if not has_region(sample, cls):
        return True
    has_mask = sample.masks is not None and cls in sample.masks
    return not has_mask and all_difficult(sample, cls)


def ebp_difficult_classes(sample: Sample, area_fraction: float = 0.25) -> set[int]:
    """Classes of ``sample`` that belong to the "difficult" pointing subset of Zhang et al. (EBP).

    An (image, class) pair is difficult when the union of the class's boxes (difficult boxes included)
    covers less than ``area_fraction`` of the image *and* the image holds at least one other class.
    Classes whose boxes are all PASCAL-difficult are ignored both as targets and as the "other" class.
    TorchRay ships this subset as a precomputed table (``pointing_game_ebp_voc07_difficult.txt``); this
    rule reproduces that table exactly on the 340 VOC07 test images with ids up to 000658.
    """
    valid = [c for c in sample.labels if not not_evaluated(sample, c)]
    if len(valid) < 2:
        return set()
    height, width = sample.size
    limit = area_fraction * height * width
    out = set()
    for cls in valid:
        if cls in sample.boxes and sample.boxes[cls].numel():
            area = int(_union_of_boxes(sample, cls).sum())
        else:
            area = int(class_mask(sample, cls).sum())
        if area < limit:
            out.add(cls)
    return out


def _union_of_boxes(sample: Sample, cls: int) -> torch.Tensor:
    mask = torch.zeros(sample.size, dtype=torch.bool)
    for x0, y0, x1, y1 in clipped_boxes(sample.boxes[cls], sample.size).tolist():
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def argmax_point(cam: torch.Tensor) -> tuple[int, int]:
    """``(x, y)`` of the maximum of a ``[H, W]`` map; ties go to the first in raster order (TorchRay)."""
    index = int(torch.argmax(cam.reshape(-1)))
    width = cam.shape[-1]
    return index % width, index // width


def pointing_hit(point: tuple[float, float], sample: Sample, cls: int, tolerance: float = 15) -> bool:
    """TorchRay's test: a region pixel at distance ``< tolerance`` from ``point`` = ``(x, y)``."""
    x, y = point
    tol2 = float(tolerance) ** 2
    if sample.masks is not None and cls in sample.masks:
        ys, xs = torch.nonzero(sample.masks[cls].cpu(), as_tuple=True)
        if ys.numel() == 0:
            return False
        return bool((((xs - x) ** 2 + (ys - y) ** 2).double() < tol2).any())
    boxes = clipped_boxes(sample.boxes.get(cls, torch.zeros(0, 4)), sample.size)
    if boxes.numel() == 0:
        return False
    # The nearest pixel of an inclusive box is the point clamped into it.
    dx = torch.clamp(boxes[:, 0] - x, min=0) + torch.clamp(x - boxes[:, 2], min=0)
    dy = torch.clamp(boxes[:, 1] - y, min=0) + torch.clamp(y - boxes[:, 3], min=0)
    return bool(((dx**2 + dy**2).double() < tol2).any())
