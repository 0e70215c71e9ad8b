"""Weak localization, the Grad-CAM paper's protocol (Selvaraju et al., ICCV 2017, Sec. 4.1, Table 1).

For each of the network's top-k predicted classes (``topk``, 5 as in the paper): take that class's map,
upsample it bilinearly to the image, keep pixels >= ``threshold`` (15%) of the map's maximum, take the
single largest 8-connected segment and its bounding box. Following the ILSVRC localization challenge
that Table 1 reports:

- top-1 cls error: the top-1 class is not a ground-truth class of the image;
- top-5 cls error: none of the top-5 classes is (``top{k}_*`` keys for another ``topk``);
- top-1 loc error: not (top-1 class correct and its box has IoU >= ``iou`` with some ground-truth box
  of that class);
- top-5 loc error: that holds for none of the top-5 predictions.

A map with no signal (all <= 0, NaN/Inf anywhere, or constant as the method returned it, e.g. a 1x1 map
from a layer after global pooling) yields no box: it counts as a localization failure and is counted in
``degenerate_maps``. Boxes are computed only where they can matter: for the top-1 class (always, it is
recorded) and for top-k classes that are ground-truth classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.boxes import Box, iou_matrix, largest_component_boxes
from evalcam.metrics.stats import flat_maps
from evalcam.requirements import Needs
from evalcam.stats.aggregation import Aggregation, Mean


def map_to_box(cam: torch.Tensor, threshold: float) -> Box | None:
    """Box of the largest segment of ``cam >= threshold * max(cam)``; None for a degenerate map."""
    return maps_to_boxes(cam[None], threshold)[0]


def maps_to_boxes(cams: torch.Tensor, threshold: float) -> list[Box | None]:
    """:func:`map_to_box` of each ``[H, W]`` map of ``cams`` ``[N, H, W]``: one thresholding and one
    labelling pass for all of them (the same boxes as map by map)."""
    if cams.shape[0] == 0:
        return []
    peak, low = cams.amax((-2, -1)), cams.amin((-2, -1))
    # is_degenerate without a pass of its own (amax and amin propagate NaN, so a map is finite when both
    # are); a constant map would threshold to the whole image: a box that says nothing about the map.
    usable = (peak.isfinite() & low.isfinite() & (peak > 0) & (peak > low)).tolist()
    keep = [i for i, ok in enumerate(usable) if ok]
    boxes: list[Box | None] = [None] * cams.shape[0]
    if not keep:
        return boxes
    if len(keep) < len(usable):
        cams, peak = cams[keep], peak[keep]
    masks = cams >= (threshold * peak)[:, None, None]
    for i, box in zip(keep, largest_component_boxes(masks.cpu().numpy()), strict=True):
        boxes[i] = box
    return boxes


def best_iou(box: tuple[int, int, int, int] | None, gt: torch.Tensor | None) -> float:
    """The largest IoU of ``box`` with the ``[N, 4]`` boxes ``gt``, in float32 NumPy
    (:func:`~evalcam.metrics.boxes.iou_matrix`: the operations of :func:`~evalcam.metrics.boxes.box_iou` in
    the same order; one image's few boxes do not pay for a dozen tensor operations)."""
    if box is None or gt is None or gt.numel() == 0:
        return 0.0
    return float(iou_matrix(np.asarray([box], dtype=np.float32), gt.float().cpu().numpy()).max())


class WeakLocalization(Metric):
    name = "weak_loc"
    needs = Needs(labels=True, boxes=True, multi_label="a top-k class counts if it is any label")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "top1_loc_error": False,
        "top5_loc_error": False,
        "top1_cls_error": False,
        "top5_cls_error": False,
    }

    def __init__(
        self, device: torch.device | str = "cpu", threshold: float = 0.15, iou: float = 0.5, topk: int = 5
    ) -> None:
        super().__init__(device)
        self.threshold, self.iou, self.topk = float(threshold), float(iou), int(topk)
        self.pred_topk = self.topk
        # The top-k keys are named after k, so a run with another topk never logs them as top-5 numbers.
        self.top = f"top{self.topk}"
        self.higher_is_better = {
            "top1_loc_error": False,
            f"{self.top}_loc_error": False,
            "top1_cls_error": False,
            f"{self.top}_cls_error": False,
        }
        for state in ("images", "top1_cls", "topk_cls", "top1_loc", "topk_loc", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        classes = batch.pred_classes[:, : self.topk].cpu().tolist()
        # Boxes only where they can matter (the top-1 class, and top-k classes that are ground truth).
        hits = [
            [c in labels for c in row]
            for labels, row in zip((set(s.labels) for s in batch.samples), classes, strict=True)
        ]
        wanted = [[k for k in range(len(row)) if k == 0 or row[k]] for row in hits]
        pairs = [(i, k) for i, ks in enumerate(wanted) for k in ks]
        flat = flat_maps(batch.pred_maps[:, : self.topk]).tolist()  # judged before resampling
        # The wanted maps of all images of one size are upsampled, thresholded and labelled together.
        by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, k in pairs:
            if not flat[i][k]:
                by_size.setdefault(tuple(batch.samples[i].size), []).append((i, k))
        box_of: dict[tuple[int, int], Box | None] = {}
        for size, group in by_size.items():
            rows = torch.tensor([i for i, _ in group], device=batch.pred_maps.device)
            cols = torch.tensor([k for _, k in group], device=batch.pred_maps.device)
            cams = upsample(batch.pred_maps[rows, cols], size)
            box_of.update(zip(group, maps_to_boxes(cams, self.threshold), strict=True))
        records = []
        counts = dict.fromkeys(("images", "top1_cls", "topk_cls", "top1_loc", "topk_loc", "degenerate"), 0)
        for i, sample in enumerate(batch.samples):
            hits_cls = hits[i]
            boxes, ious, degenerate = {}, {}, 0
            for k in wanted[i]:
                box = box_of.get((i, k))
                degenerate += box is None
                boxes[k] = box
                ious[k] = best_iou(box, sample.boxes.get(classes[i][k])) if hits_cls[k] else 0.0
            loc_hits = [hits_cls[k] and ious[k] >= self.iou for k in wanted[i]]
            top1_loc = bool(loc_hits[0])
            topk_loc = any(loc_hits)
            for state, value in (
                ("images", 1),
                ("top1_cls", hits_cls[0]),
                ("topk_cls", any(hits_cls)),
                ("top1_loc", top1_loc),
                ("topk_loc", topk_loc),
                ("degenerate", degenerate),
            ):
                counts[state] += int(value)
            records.append(
                self.record(
                    {
                        "top1_box": list(boxes[0]) if boxes[0] is not None else None,
                        "top1_iou": ious[0],
                        "top1_cls_ok": hits_cls[0],
                        f"{self.top}_cls_ok": any(hits_cls),
                        "top1_loc_ok": top1_loc,
                        f"{self.top}_loc_ok": topk_loc,
                    }
                )
            )
        # Whole counts: one addition per batch gives the same float64 sums as one per image.
        for state, value in counts.items():
            setattr(self, state, getattr(self, state) + float(value))
        return records

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # Errors are 1 - the per-image success rate the records hold.
        column = {k: self.column(k.replace("_error", "_ok")) for k in self.higher_is_better}
        return {k: Mean(column[k], scale=-1.0, offset=1.0) for k in keys if k in column}

    def compute(self) -> dict[str, float]:
        n = self.images
        return {
            "top1_loc_error": 1 - safe_ratio(self.top1_loc, n),
            f"{self.top}_loc_error": 1 - safe_ratio(self.topk_loc, n),
            "top1_cls_error": 1 - safe_ratio(self.top1_cls, n),
            f"{self.top}_cls_error": 1 - safe_ratio(self.topk_cls, n),
            "images": float(n),
            "degenerate_maps": float(self.degenerate),
        }
