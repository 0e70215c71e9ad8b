"""Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018)
as implemented in TorchRay's ``benchmark/pointing_game.py``, and the energy-based pointing game of
Score-CAM (Wang et al., CVPR-W 2020, Sec. 5.2).

Pointing game protocol:

- every ground-truth class of the image is a target; its map (``batch.gt_maps``) is upsampled bilinearly
  to the image and its maximum (first in raster order on ties) is the point;
- the point hits when a pixel of the class's region (mask, or union of all its boxes) lies at distance
  ``< tolerance`` (15 px) from it; a box-annotated class whose boxes are all PASCAL-difficult is skipped
  (:func:`evalcam.metrics.regions.not_evaluated`);
- accuracy is the mean over classes of per-class accuracy ``hits / (hits + misses)``. TorchRay averages
  over all classes of the label space; here the mean runs over the classes that were evaluated at least
  once (identical on VOC07 test / COCO val, where every class occurs; meaningful on ImageNet subsets);
- ``difficult_accuracy``: the same on the EBP "difficult" subset (see
  :func:`evalcam.metrics.regions.ebp_difficult_classes`).

Degenerate maps (non-finite, or constant so that the argmax is arbitrary) count as misses and are counted
in ``degenerate_maps``.

Energy-based pointing game: the share of the map's energy inside the class region,
``sum(L * region) / sum(L)`` with ``L = max(map, 0)`` upsampled bilinearly to the image. Targets and skips
as above; ``energy`` is the mean over evaluated (image, class) pairs. A degenerate map (non-finite, no
positive energy, or constant: it singles out no region) scores 0, like a miss of the pointing game, and is
counted in ``degenerate_maps``.

Bootstrap intervals (:mod:`evalcam.stats`): images are resampled with all their (class, hit) pairs and
the per-class accuracies and their mean are recomputed inside every resample.

Both run per image as tensor operations over all of the image's evaluated classes on the maps' device
(:mod:`evalcam.metrics.pointing_tensors`); only the annotation side (class regions, the difficult subset)
is built per class from the sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.mask_scores import relevance_mass
from evalcam.metrics.pointing_tensors import (
    argmax_points,
    class_cams,
    class_regions,
    energy_shares,
    points_hit,
)
from evalcam.metrics.regions import ebp_difficult_classes, not_evaluated
from evalcam.metrics.stats import flat_maps
from evalcam.requirements import Needs
from evalcam.stats.aggregation import Aggregation, ClassMean, PairMean


def _gt_pairs(batch: EvalBatch) -> list[list[tuple[int, int]]]:
    """Per image: (column in gt_maps, class) for every real (non-padding) ground-truth class."""
    if batch.gt_classes is None or batch.gt_maps is None:
        raise ValueError(
            "this metric needs maps of the ground-truth classes (needs_gt_maps); none were given"
        )
    classes = batch.gt_classes.cpu().tolist()
    return [[(col, int(c)) for col, c in enumerate(row) if c >= 0] for row in classes]


def is_flat(cam: torch.Tensor) -> bool:
    """No usable maximum: non-finite values or a constant map."""
    return bool(flat_maps(cam))


class PointingGame(Metric):
    name = "pointing"
    needs = Needs(labels=True, regions=True, multi_label="every label; mean of per-class accuracies")
    needs_gt_maps = True
    higher_is_better: ClassVar[dict[str, bool]] = {
        "accuracy": True,
        "overall_accuracy": True,
        "difficult_accuracy": True,
    }

    def __init__(
        self,
        device: torch.device | str = "cpu",
        tolerance: float = 15,
        num_classes: int = 1000,
        difficult_area: float = 0.25,
    ) -> None:
        super().__init__(device)
        self.tolerance = float(tolerance)
        self.num_classes = int(num_classes)
        self.difficult_area = float(difficult_area)
        for state in ("hits", "misses", "hits_difficult", "misses_difficult"):
            self.add_state(state, torch.zeros(self.num_classes, dtype=torch.float64))
        for state in ("skipped", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        records = []
        device = batch.gt_maps.device if batch.gt_maps is not None else torch.device("cpu")
        hits = torch.zeros(
            2, 2, self.num_classes, dtype=torch.float64, device=device
        )  # [all/difficult, hit/miss, C]
        skipped = degenerate = 0
        # A method that defines its point directly (the centre baseline: TorchRay's (w/2, h/2)) is scored
        # at that point, not at the argmax of its resampled map.
        fixed_point = getattr(batch.explainer, "pointing_point", None)
        for i, (sample, pairs) in enumerate(zip(batch.samples, _gt_pairs(batch), strict=True)):
            for _, cls in pairs:
                if cls >= self.num_classes:
                    raise ValueError(
                        f"class {cls} >= num_classes={self.num_classes}; set metrics.pointing.num_classes"
                    )
            difficult = ebp_difficult_classes(sample, self.difficult_area)
            evaluated = [(col, cls) for col, cls in pairs if not not_evaluated(sample, cls)]
            skipped += len(pairs) - len(evaluated)
            cols = [col for col, _ in evaluated]
            classes = [cls for _, cls in evaluated]
            # all evaluated classes of the image at once, on the maps' device
            cams, flat = class_cams(batch.gt_maps[i, cols], sample.size)
            points = argmax_points(cams)
            if fixed_point is not None:
                points = torch.tensor(
                    [fixed_point(sample.size)] * len(classes), dtype=torch.float64, device=cams.device
                ).reshape(len(classes), 2)
            hit = points_hit(points, class_regions(sample, classes, cams.device), self.tolerance) & ~flat
            cls_index = torch.tensor(classes, dtype=torch.long, device=device)
            miss = (~hit).long().to(device)
            ones = torch.ones(len(classes), dtype=torch.float64, device=device)
            hits[0].index_put_((miss, cls_index), ones, accumulate=True)
            in_difficult = torch.tensor([c in difficult for c in classes], dtype=torch.bool, device=device)
            hits[1].index_put_(
                (miss[in_difficult], cls_index[in_difficult]), ones[in_difficult], accumulate=True
            )
            degenerate += int(flat.sum())
            found = dict(
                zip(cols, zip(hit.tolist(), points.tolist(), flat.tolist(), strict=True), strict=True)
            )
            outcome = [int(found[col][0]) if col in found else -1 for col, _ in pairs]
            where = [None if col not in found or found[col][2] else found[col][1] for col, _ in pairs]
            records.append(
                self.record(
                    classes=[c for _, c in pairs],
                    hit=outcome,  # 1 hit, 0 miss, -1 not evaluated (all boxes difficult)
                    points=where,
                    difficult=[c in difficult for _, c in pairs],
                )
            )
        hits = hits.to(self.device)
        self.hits = self.hits + hits[0, 0]
        self.misses = self.misses + hits[0, 1]
        self.hits_difficult = self.hits_difficult + hits[1, 0]
        self.misses_difficult = self.misses_difficult + hits[1, 1]
        self.skipped = self.skipped + skipped
        self.degenerate = self.degenerate + degenerate
        return records

    @staticmethod
    def _class_mean(hits: torch.Tensor, misses: torch.Tensor) -> float:
        total = hits + misses
        seen = total > 0
        if not bool(seen.any()):
            return float("nan")
        return float((hits[seen] / total[seen]).mean())

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # A mean of per-class means: resampled images carry their (class, hit) pairs and the per-class
        # accuracies are recomputed inside every resample.
        classes, hit = self.column("classes"), self.column("hit")
        known: dict[str, Aggregation] = {
            "accuracy": ClassMean(classes, hit),
            "difficult_accuracy": ClassMean(classes, hit, only=self.column("difficult")),
            "overall_accuracy": PairMean(hit, skip_negative=True),
        }
        return {k: known[k] for k in keys if k in known}

    def compute(self) -> dict[str, float]:
        return {
            "accuracy": self._class_mean(self.hits, self.misses),
            "overall_accuracy": safe_ratio(self.hits.sum(), (self.hits + self.misses).sum()),
            "difficult_accuracy": self._class_mean(self.hits_difficult, self.misses_difficult),
            "evaluated": float((self.hits + self.misses).sum()),
            "evaluated_difficult": float((self.hits_difficult + self.misses_difficult).sum()),
            "classes_evaluated": float(((self.hits + self.misses) > 0).sum()),
            "skipped": float(self.skipped),
            "degenerate_maps": float(self.degenerate),
        }


def energy_in_region(cam: torch.Tensor, region: torch.Tensor) -> float | None:
    """Share of ``max(cam, 0)`` inside the bool ``region``; None for a degenerate map (non-finite, constant,
    or without positive energy)."""
    if is_flat(cam) or not bool((cam > 0).any()):
        return None
    # The relevance mass accuracy of Arras et al. (2022) on the class region: one definition for both.
    return float(relevance_mass(cam[None], region[None], positive=True)[0])


class EnergyPointingGame(Metric):
    name = "energy_pointing"
    needs = Needs(labels=True, regions=True, multi_label="every label, one (image, class) pair each")
    needs_gt_maps = True
    higher_is_better: ClassVar[dict[str, bool]] = {"energy": True}

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        for state in ("energy", "pairs", "skipped", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        records = []
        for i, (sample, pairs) in enumerate(zip(batch.samples, _gt_pairs(batch), strict=True)):
            evaluated = [(col, cls) for col, cls in pairs if not not_evaluated(sample, cls)]
            cols = [col for col, _ in evaluated]
            cams, flat = class_cams(batch.gt_maps[i, cols], sample.size)
            regions = class_regions(sample, [cls for _, cls in evaluated], cams.device)
            shares, degenerate = energy_shares(cams, regions, flat)
            self.energy = self.energy + shares.sum().to(self.device)
            self.pairs = self.pairs + len(evaluated)
            self.skipped = self.skipped + (len(pairs) - len(evaluated))
            self.degenerate = self.degenerate + degenerate.sum().to(self.device)
            found = dict(zip(cols, shares.tolist(), strict=True))
            records.append(
                self.record(
                    classes=[c for _, c in pairs],
                    energy=[found.get(col) for col, _ in pairs],
                )
            )
        return records

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # The mean runs over (image, class) pairs; skipped classes hold None.
        return {"energy": PairMean(self.column("energy"))} if "energy" in keys else {}

    def compute(self) -> dict[str, float]:
        return {
            "energy": safe_ratio(self.energy, self.pairs),
            "evaluated": float(self.pairs),
            "skipped": float(self.skipped),
            "degenerate_maps": float(self.degenerate),
        }
