"""Localisation against ground-truth masks (Quantus's "localisation" family), no extra forward pass.

Protocol shared by the five metrics:

- every ground-truth class of an image is a target; its map (``batch.gt_maps``) is upsampled bilinearly to
  the image (``Sample.size``), where the annotations live;
- the class region is its segmentation mask (COCO: union of the class's instance masks). On a box-only
  dataset (VOC, ImageNet) a run is refused before it starts unless ``boxes_as_masks: true`` is set, which
  uses the union of the class's boxes as the mask (:func:`evalcam.metrics.regions.class_mask`), an
  approximation the papers do not make (Arras et al. use pixel masks; Kohlbrenner et al. use boxes);
- classes without a region, and box-annotated classes whose boxes are all PASCAL-difficult, are skipped
  (:func:`evalcam.metrics.regions.not_evaluated`, as the pointing games);
- an image's value is the mean over its evaluated classes (record ``<name>.<key>``, per class in
  ``<name>.per_class``); the logged ``<name>/<key>`` is the mean over images with an evaluated class;
- a run in which no pair was scored logs no ``<name>/<key>`` (NaN, not 0); ``summary.json``'s ``notes``
  say why (how many pairs were skipped);
- a degenerate map (non-finite, constant, or without a positive value) scores 0 (0.5 for ``mask_auc``:
  what a constant map gets from the ROC) and is counted in ``<name>/degenerate_maps``, judged on the
  method's map before resampling.

The scores (:mod:`evalcam.metrics.mask_scores`) are the papers'; where Quantus 0.6 differs, the function's
docstring says how (tests/test_metrics_mask_quantus.py pins each difference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.mask_scores import (
    attribution_localisation,
    degenerate_rows,
    relevance_mass,
    relevance_rank,
    roc_auc,
    topk_intersection,
)
from evalcam.metrics.pointing import _gt_pairs
from evalcam.metrics.regions import class_mask, not_evaluated
from evalcam.requirements import Needs

#: pixels of resampled maps scored in one call (~64 MB as float32)
_CHUNK_PIXELS = 1 << 24


class _MaskMetric(Metric):
    """One score per (image, ground-truth class) pair against the class's mask."""

    needs_gt_maps = True
    needs = Needs(
        labels=True, regions=True, multi_label="every label; an image scores the mean of its classes"
    )
    key = "score"
    #: what a degenerate map scores
    degenerate_score = 0.0

    def __init__(self, device: torch.device | str = "cpu", boxes_as_masks: bool = False) -> None:
        super().__init__(device)
        self.boxes_as_masks = bool(boxes_as_masks)
        # Box-only datasets are refused before the run unless boxes may stand in for masks.
        self.needs = replace(type(self).needs, masks=not self.boxes_as_masks)
        for state in ("total", "images", "pairs", "skipped", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``[L]`` scores of valid ``[L, H, W]`` maps against bool masks."""
        raise NotImplementedError

    def usable(self, mask: torch.Tensor) -> bool:
        """Whether a (non-empty) mask can be scored at all; otherwise the pair is skipped."""
        return True

    def _mask(self, sample, cls: int) -> torch.Tensor:
        if sample.masks is None and not self.boxes_as_masks:
            raise ValueError(
                f"{self.name} needs segmentation masks but image {sample.image_id} has boxes only; "
                f"use a dataset with masks (coco2017) or set metrics.{self.name}.boxes_as_masks=true"
            )
        return class_mask(sample, cls)

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        all_pairs = _gt_pairs(batch)
        # Which (image, class) pairs are scored, in order; images of one size are resampled and scored
        # together (one upsampling call and one batched score per size, not one per image).
        kept: list[list[tuple[int, int]]] = []
        groups: dict[tuple[int, int], list[tuple[int, int, torch.Tensor]]] = {}
        skipped = 0
        for i, (sample, pairs) in enumerate(zip(batch.samples, all_pairs, strict=True)):
            row = []
            for col, cls in pairs:
                mask = None if not_evaluated(sample, cls) else self._mask(sample, cls)
                if mask is None or not self.usable(mask):
                    skipped += 1
                    continue
                row.append((col, cls))
                groups.setdefault(sample.size, []).append((i, col, mask))
            kept.append(row)
        scores: dict[tuple[int, int], float] = {}
        degenerate_total = 0
        for size, group in groups.items():
            # chunks bound the memory of the resampled maps (many classes of large images)
            step = max(1, _CHUNK_PIXELS // (size[0] * size[1]))
            for members in (group[j : j + step] for j in range(0, len(group), step)):
                degenerate_total += self._score_members(batch, size, members, scores)
        self.skipped = self.skipped + skipped
        self.degenerate = self.degenerate + degenerate_total
        records = []
        for i, (pairs, row) in enumerate(zip(all_pairs, kept, strict=True)):
            mean = None
            if row:
                values = torch.tensor([scores[(i, col)] for col, _ in row], dtype=torch.float64)
                mean = values.mean()
                self.pairs = self.pairs + len(row)
                self.total = self.total + mean.to(self.device)
                self.images = self.images + 1
            scored = {cls: scores[(i, col)] for col, cls in row}
            records.append(
                self.record(
                    {self.key: None if mean is None else float(mean)},
                    classes=[c for _, c in pairs],
                    per_class=[scored.get(c) for _, c in pairs],
                )
            )
        return records

    def _score_members(
        self,
        batch: EvalBatch,
        size: tuple[int, int],
        members: list[tuple[int, int, torch.Tensor]],
        scores: dict[tuple[int, int], float],
    ) -> int:
        """Scores (image, column, mask) pairs of one image size into ``scores``; returns how many of their
        maps were degenerate (scored ``degenerate_score``)."""
        rows = torch.tensor([i for i, _, _ in members])
        cols = torch.tensor([col for _, col, _ in members])
        raw = batch.gt_maps[rows, cols].to(self.device)
        degenerate = degenerate_rows(raw)  # judged on the method's map, before resampling
        values = torch.full((len(members),), self.degenerate_score, dtype=torch.float64)
        valid = (~degenerate).cpu()
        if bool(valid.any()):
            maps = upsample(raw[valid.to(raw.device)], size)
            masks = torch.stack([m for (_, _, m), ok in zip(members, valid.tolist(), strict=True) if ok])
            values[valid] = self.score(maps, masks.to(self.device)).cpu()
        scores.update(zip([(i, col) for i, col, _ in members], values.tolist(), strict=True))
        return int(degenerate.sum())

    def empty_reason(self, values: Mapping[str, float]) -> str:
        skipped = int(values.get("skipped", 0))
        if not skipped:
            return "no image was scored (no image with a ground-truth class evaluated)"
        return (
            f"no pair scored: all {skipped} (image, class) pair(s) were skipped (no mask or box region, "
            f"all boxes difficult, or a region this metric cannot score)"
        )

    def compute(self) -> dict[str, float]:
        return {
            self.key: safe_ratio(self.total, self.images),  # NaN when no pair was scored: no number, not 0
            "images": float(self.images),
            "evaluated": float(self.pairs),
            "skipped": float(self.skipped),
            "degenerate_maps": float(self.degenerate),
        }


class RelevanceMassAccuracy(_MaskMetric):
    """Share of the positive relevance inside the mask (Arras et al., "CLEVR-XAI", Information Fusion
    2022). The energy pointing game of Score-CAM is the same number on boxes."""

    name = "relevance_mass"
    key = "accuracy"
    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True}

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return relevance_mass(maps, masks, positive=True)


class RelevanceRankAccuracy(_MaskMetric):
    """Fraction of the ``|mask|`` most relevant pixels inside the mask (Arras et al. 2022)."""

    name = "relevance_rank"
    key = "accuracy"
    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True}

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return relevance_rank(maps, masks)


class AttributionLocalisation(_MaskMetric):
    """``R_in / R_tot`` of the positive relevance, optionally weighted by ``S_tot / S_in`` (Kohlbrenner et
    al., "Towards best practice in explaining neural network decisions with LRP", IJCNN 2020).
    ``max_size``: masks covering more than this share of the image are skipped (the paper evaluates
    objects smaller than the image; default 1.0 keeps all)."""

    name = "attribution_localisation"
    key = "ratio"
    higher_is_better: ClassVar[dict[str, bool]] = {"ratio": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        boxes_as_masks: bool = False,
        weighted: bool = False,
        max_size: float = 1.0,
    ) -> None:
        if not 0 < float(max_size) <= 1:
            raise ValueError(
                f"metrics.attribution_localisation.max_size={max_size} must lie in (0, 1]: the largest "
                "share of the image a mask may cover"
            )
        super().__init__(device, boxes_as_masks)
        self.weighted = bool(weighted)
        self.max_size = float(max_size)

    def usable(self, mask: torch.Tensor) -> bool:
        return float(mask.float().mean()) <= self.max_size

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return attribution_localisation(maps, masks, weighted=self.weighted)


class TopKIntersection(_MaskMetric):
    """Fraction of the ``k`` most relevant pixels inside the mask (Theiner et al., "Interpretable semantic
    photo geolocation", WACV 2022; Quantus ``TopKIntersection``, same default ``k = 1000``)."""

    name = "topk_intersection"
    key = "intersection"
    higher_is_better: ClassVar[dict[str, bool]] = {"intersection": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        boxes_as_masks: bool = False,
        k: int = 1000,
        concept_influence: bool = False,
    ) -> None:
        if int(k) < 1:
            raise ValueError(f"metrics.topk_intersection.k={k} must be a positive number of pixels")
        super().__init__(device, boxes_as_masks)
        self.k = int(k)
        self.concept_influence = bool(concept_influence)

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        pixels = maps[0].numel()
        if self.k > pixels:
            raise ValueError(
                f"metrics.topk_intersection.k={self.k} is larger than the {pixels} pixels of an image "
                f"({tuple(maps.shape[-2:])}); set a smaller k"
            )
        return topk_intersection(maps, masks, self.k, self.concept_influence)


class MaskAUC(_MaskMetric):
    """ROC AUC of the map as a pixel classifier of the mask (Fawcett 2006, as in Quantus ``AUC``). A mask
    that covers the whole image has no negatives: the pair is skipped."""

    name = "mask_auc"
    key = "auc"
    degenerate_score = 0.5
    higher_is_better: ClassVar[dict[str, bool]] = {"auc": True}

    def usable(self, mask: torch.Tensor) -> bool:
        return not bool(mask.all())

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return roc_auc(maps, masks)
