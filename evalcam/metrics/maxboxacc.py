"""MaxBoxAcc and MaxBoxAccV2 (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right",
CVPR 2020; protocol of clovaai/wsolevaluation ``evaluation.py`` / ``inference.py``).

For every ground-truth class of an image (ILSVRC/CUB have one), the class's map (``batch.gt_maps``) is
resized bicubically to the image (wsolevaluation: ``cv2.resize(..., INTER_CUBIC)``) and min-max normalized
to [0, 1]. For each CAM threshold ``t`` in ``arange(0, 1, cam_curve_interval)`` the map is binarized the
way wsolevaluation does it (``uint8(255 * map) > int(255 * t)``, cv2's THRESH_BINARY on the quantized map)
and boxes are drawn around its 8-connected segments:

- **MaxBoxAcc**: the box of the largest segment; box accuracy at ``t`` is the fraction of (image, class)
  pairs whose box has IoU >= ``iou`` (δ = 50%) with some GT box of the class; MaxBoxAcc is its maximum
  over ``t``.
- **MaxBoxAccV2**: the boxes of *all* segments, a pair counts when the best IoU over (segment box, GT box)
  is >= δ; MaxBoxAccV2 is the mean over δ in ``iou_thresholds`` (30, 50, 70) of the maximum over ``t``.

State: per-threshold hit counts for every δ, so partial runs merge exactly. ``best_threshold`` is the
maximizing ``t`` (lowest on ties). Choe et al. pick ``t`` on a held-out split: pass the value found on one
run as ``fixed_threshold`` to another and the accuracies are read at that threshold instead of maximized.

Boxes follow wsolevaluation exactly (:mod:`evalcam.metrics.contours`): every contour that
``cv2.findContours(RETR_TREE)`` returns, outer borders of 8-connected segments *and* borders of their
holes, is boxed as ``[x, y, x + w, y + h]`` from ``cv2.boundingRect`` clipped to the image, i.e. the box
reaches one pixel past the segment's right and bottom edge (not past the image); V1 takes the contour of
largest polygon area (``cv2.contourArea``, OpenCV's list order on ties), V2 all of them. IoU counts
pixels inclusively (``(x1 - x0 + 1) * (y1 - y0 + 1)``, wsolevaluation's ``calculate_multiple_iou``).
The threshold step defaults to wsolevaluation's ``cam_curve_interval=0.001``. One deliberate difference:
an empty binarized map yields no box (wsolevaluation scores a 1-pixel box at the origin); it cannot occur
on a non-degenerate map, whose maximum quantizes to 255 above every level ``int(255 t)``, t < 1.
Accuracies are fractions in [0, 1], not percentages.

Degenerate maps (NaN/Inf or constant): wsolevaluation's ``normalize_scoremap`` turns them into all-zero
maps, which binarize to nothing at every threshold; here likewise they miss at every threshold and are
counted in ``degenerate_maps``.

Bootstrap intervals (:mod:`evalcam.stats`): each image's record carries its own hit counts per (IoU
criterion, threshold) (``maxboxacc.hits_v1``/``hits_v2``) and its number of pairs, so every resample of the
images rebuilds the accuracy curves and picks the best threshold again inside the resample; the interval
thus includes the optimism of choosing the threshold on the evaluated images themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from evalcam.metrics.base import EvalBatch, Metric
from evalcam.metrics.boxes import EIGHT_CONNECTED, iou_matrix
from evalcam.metrics.contours import contour_boxes
from evalcam.metrics.regions import clipped_boxes
from evalcam.metrics.stats import flat_maps
from evalcam.requirements import Needs
from evalcam.stats.aggregation import Aggregation, BestThreshold


def resize_map(cam: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """``[h, w]`` map resized to ``size`` (half-pixel centres, like cv2.resize)."""
    out = F.interpolate(cam[None, None].float(), size=tuple(size), mode=mode, align_corners=False)
    return out[0, 0]


def quantize(cam: torch.Tensor) -> np.ndarray | None:
    """wsolevaluation's score map as uint8 ``floor(255 * minmax(cam))``; None for a degenerate map."""
    cam = cam.detach().float().cpu()
    if not bool(torch.isfinite(cam).all()):
        return None
    lo, hi = cam.min(), cam.max()
    if not bool(hi > lo):
        return None
    normalized = ((cam - lo) / (hi - lo)).numpy().astype(np.float32)
    return (normalized * np.float32(255)).astype(np.uint8)


def segment_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive boxes ``[K, 4]`` and pixel counts ``[K]`` of the 8-connected segments of ``mask``."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    boxes = np.array(
        [[s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1] for s in ndimage.find_objects(labels)],
        dtype=np.int64,
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return boxes, sizes


def best_ious(
    levels: np.ndarray, quantized: np.ndarray | None, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold level: IoU of the largest contour's box (V1) and best IoU over all contours (V2)."""
    v1 = np.zeros(len(levels))
    v2 = np.zeros(len(levels))
    if quantized is None or len(gt) == 0:
        return v1, v2
    cache: dict[int, tuple[float, float]] = {}
    for t, level in enumerate(levels.tolist()):
        if level not in cache:
            boxes, largest = contour_boxes(quantized > level)
            if len(boxes) == 0:
                cache[level] = (0.0, 0.0)
            else:
                ious = iou_matrix(boxes, gt).max(1)
                cache[level] = (float(ious[largest]), float(ious.max()))
        v1[t], v2[t] = cache[level]
    return v1, v2


class MaxBoxAcc(Metric):
    name = "maxboxacc"
    needs = Needs(labels=True, boxes=True, multi_label="every label, one (image, class) pair each")
    needs_gt_maps = True
    higher_is_better: ClassVar[dict[str, bool]] = {
        "max_box_acc": True,
        "max_box_acc_v2": True,
        **{f"max_box_acc_iou{d}": True for d in (30, 50, 70)},
        **{f"max_box_acc_v2_iou{d}": True for d in (30, 50, 70)},
    }

    def __init__(
        self,
        device: torch.device | str = "cpu",
        cam_curve_interval: float = 0.001,
        iou: int = 50,
        iou_thresholds: Sequence[int] = (30, 50, 70),
        fixed_threshold: float | None = None,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__(device)
        # np.arange exactly as wsolevaluation, so int(255 * t) gives the same levels.
        self.thresholds = np.arange(0, 1, float(cam_curve_interval))
        self.levels = (self.thresholds * 255).astype(np.int64)
        self.iou = int(iou)
        self.iou_v2 = [int(d) for d in iou_thresholds]
        self.deltas = sorted({self.iou, *self.iou_v2})
        self.fixed_threshold = None if fixed_threshold is None else float(fixed_threshold)
        if self.fixed_threshold is not None and not 0 <= self.fixed_threshold < 1:
            raise ValueError(f"fixed_threshold must lie in [0, 1); got {self.fixed_threshold}")
        self.interpolation = interpolation
        shape = (len(self.deltas), len(self.thresholds))
        self.add_state("hits_v1", torch.zeros(shape, dtype=torch.float64))
        self.add_state("hits_v2", torch.zeros(shape, dtype=torch.float64))
        for state in ("pairs", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        if batch.gt_classes is None or batch.gt_maps is None:
            raise ValueError("maxboxacc needs maps of the ground-truth classes; none were given")
        deltas = np.array(self.deltas, dtype=np.float64)[:, None] / 100
        hits_v1 = np.zeros((len(self.deltas), len(self.thresholds)))
        hits_v2 = np.zeros_like(hits_v1)
        pairs = degenerate = 0
        records = []
        gt_classes = batch.gt_classes.cpu().tolist()
        for i, sample in enumerate(batch.samples):
            best, best_t = [], []
            # This image's own hit counts per (IoU criterion, threshold): what a bootstrap needs to redo
            # the threshold choice inside each resample.
            own_v1 = np.zeros_like(hits_v1)
            own_v2 = np.zeros_like(hits_v1)
            for col, cls in enumerate(gt_classes[i]):
                if cls < 0:
                    continue
                gt = clipped_boxes(
                    sample.boxes.get(cls, torch.zeros(0, 4)), sample.size, rounded=False
                ).numpy()
                if len(gt) == 0:
                    continue  # no box to compare with: not a localization target
                raw = batch.gt_maps[i, col]
                # Judged before resampling: min-max normalization would blow resampling noise up to [0, 1].
                flat = bool(flat_maps(raw))
                quantized = None if flat else quantize(resize_map(raw, sample.size, self.interpolation))
                degenerate += quantized is None
                v1, v2 = best_ious(self.levels, quantized, gt)
                own_v1 += v1[None, :] >= deltas
                own_v2 += v2[None, :] >= deltas
                pairs += 1
                best.append(float(v1.max()))
                best_t.append(float(self.thresholds[int(np.argmax(v1))]))
            hits_v1 += own_v1
            hits_v2 += own_v2
            records.append(
                self.record(
                    best_iou=best,
                    best_iou_threshold=best_t,
                    pairs=len(best),
                    hits_v1=own_v1.astype(np.int32).ravel().tolist(),
                    hits_v2=own_v2.astype(np.int32).ravel().tolist(),
                )
            )
        self.hits_v1 = self.hits_v1 + torch.from_numpy(hits_v1).to(self.device)
        self.hits_v2 = self.hits_v2 + torch.from_numpy(hits_v2).to(self.device)
        self.pairs = self.pairs + pairs
        self.degenerate = self.degenerate + degenerate
        return records

    def _index_of(self, threshold: float) -> int:
        return int(np.argmin(np.abs(self.thresholds - threshold)))

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # The best threshold is chosen again inside every resample (or read at fixed_threshold).
        fixed = None if self.fixed_threshold is None else self._index_of(self.fixed_threshold)
        index = {d: self.deltas.index(d) for d in self.deltas}

        def curve(variant: str, deltas: Sequence[int]) -> BestThreshold:
            hits = self.column(f"hits_{variant}")
            picked = tuple(index[d] for d in deltas)
            return BestThreshold(hits, self.column("pairs"), len(self.deltas), picked, fixed)

        known = {"max_box_acc": curve("v1", [self.iou]), "max_box_acc_v2": curve("v2", self.iou_v2)}
        known |= {f"max_box_acc_iou{d}": curve("v1", [d]) for d in self.deltas}
        known |= {f"max_box_acc_v2_iou{d}": curve("v2", [d]) for d in self.iou_v2}
        return {k: known[k] for k in keys if k in known}

    def compute(self) -> dict[str, float]:
        n = float(self.pairs)
        out: dict[str, float] = {"pairs": n, "degenerate_maps": float(self.degenerate)}
        if n == 0:
            return {**out, "max_box_acc": float("nan"), "max_box_acc_v2": float("nan")}
        fixed = None if self.fixed_threshold is None else self._index_of(self.fixed_threshold)
        curves = {
            variant: dict(zip(self.deltas, (hits / n).cpu().numpy(), strict=True))
            for variant, hits in (("v1", self.hits_v1), ("v2", self.hits_v2))
        }

        def read(curve: np.ndarray) -> float:
            return float(curve[int(np.argmax(curve)) if fixed is None else fixed])

        def best(curve: np.ndarray) -> float:
            return float(self.thresholds[int(np.argmax(curve))])  # lowest maximizing threshold

        out["max_box_acc"] = read(curves["v1"][self.iou])
        out["best_threshold"] = best(curves["v1"][self.iou])
        for delta in self.deltas:
            out[f"max_box_acc_iou{delta}"] = read(curves["v1"][delta])
        for delta in self.iou_v2:
            out[f"max_box_acc_v2_iou{delta}"] = read(curves["v2"][delta])
            out[f"best_threshold_v2_iou{delta}"] = best(curves["v2"][delta])
        out["max_box_acc_v2"] = float(np.mean([out[f"max_box_acc_v2_iou{d}"] for d in self.iou_v2]))
        if fixed is not None:
            out["threshold_used"] = float(self.thresholds[fixed])
        return out
