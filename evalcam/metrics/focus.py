"""Focus (Arias-Duart, Parés, Garcia-Gasulla & Giménez-Ábalos, "Focus! Rating XAI methods and finding
biases", FUZZ-IEEE 2022, arXiv:2109.15035).

The paper explains the target class on a 2x2 mosaic of four images, two of the target class and two of
other classes, and scores the share of the positive relevance that falls on the two target-class tiles
(1: all relevance on the right images; 0.5: no preference). It builds mosaics from a labelled dataset.

Inside evalcam's batch pipeline the mosaics are built from the images of the batch, one per image
(the *anchor*, target = its first label ``Sample.labels[0]``), seeded and independent of other runs:

- the second target tile is another image of the batch carrying the target label (the first in batch
  order) or, when the batch holds none (the usual case on ImageNet), the anchor itself again;
- the two other tiles are drawn without replacement from the batch images that share no label with the
  anchor, with a generator seeded by ``(seed, image_id)``; with fewer than two such images the anchor gets
  no mosaic and is counted in ``focus/skipped`` (use a larger ``batch_size``);
- the four tiles are placed in a seeded random order; each is the network input resized to half its
  height and width (bilinear, antialiased), so the mosaic has the input's size;
- all mosaics of a batch are explained in one call of the method (target column = the anchor's label);
  the map is upsampled to the mosaic and ``focus`` is the positive relevance in the target quadrants over
  the total (:func:`evalcam.metrics.mask_scores.quadrant_share`, the formula of Quantus ``Focus``).

Quantus's ``Focus`` swapped height and width before its PR #357; Quantus 0.6 splits quadrants at
``H // 2`` and ``W // 2`` as here (tests/test_metrics_mask_quantus.py checks it on non-square maps).

Mosaics therefore depend on the batch's images (``batch_size`` and the dataset's order); the seed fixes
everything else. Focus is ``batch_dependent``: the runner never splits a batch (pacing, resume), so a
paced, interrupted or resumed run builds the mosaics an uninterrupted one builds. A run in which no image
got a mosaic logs no ``focus/focus`` (NaN, not 0) and ``summary.json``'s ``notes`` say why. A degenerate
mosaic map (non-finite, constant or without positive relevance) scores 0.5, what a constant map gets,
and is counted in ``focus/degenerate_maps``. Labels must be classes of the model (ImageNet models on
ImageNet); other pairings are refused with a one-line error.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.mask_scores import degenerate_rows, quadrant_share
from evalcam.requirements import Needs


def image_generator(seed: int, image_id: str) -> torch.Generator:
    """A CPU generator that depends only on ``seed`` and the image (not on batching or global state)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(image_id.encode()))


def plan_mosaics(
    labels: list[list[int]], ids: list[str], seed: int
) -> list[tuple[list[int], list[int]] | None]:
    """Per anchor: ``(tiles, flags)`` with the batch indices of the four tiles in quadrant order
    (top-left, top-right, bottom-left, bottom-right) and 1 where the tile shows the target class;
    None when the batch holds fewer than two images without the anchor's target label."""
    plans: list[tuple[list[int], list[int]] | None] = []
    for i, (own, image_id) in enumerate(zip(labels, ids, strict=True)):
        if not own:
            plans.append(None)
            continue
        target = own[0]
        partner = next((j for j, other in enumerate(labels) if j != i and target in other), i)
        others = [j for j, other in enumerate(labels) if not set(other) & set(own)]
        if len(others) < 2:
            plans.append(None)
            continue
        gen = image_generator(seed, image_id)
        pick = torch.randperm(len(others), generator=gen)[:2].tolist()
        tiles = [i, partner, others[pick[0]], others[pick[1]]]
        flags = [1, 1, 0, 0]
        order = torch.randperm(4, generator=gen).tolist()
        plans.append(([tiles[k] for k in order], [flags[k] for k in order]))
    return plans


def build_mosaics(inputs: torch.Tensor, plans: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """``[M, 3, 2*(H//2), 2*(W//2)]`` mosaics of half-size tiles of ``inputs`` ``[B, 3, H, W]``."""
    h, w = inputs.shape[-2] // 2, inputs.shape[-1] // 2
    tiles = F.interpolate(inputs, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    index = torch.tensor([p[0] for p in plans], dtype=torch.long, device=inputs.device)  # [M, 4]
    t = tiles[index]  # [M, 4, 3, h, w]
    top = torch.cat([t[:, 0], t[:, 1]], dim=-1)
    bottom = torch.cat([t[:, 2], t[:, 3]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


class Focus(Metric):
    """Share of positive relevance on the target-class tiles of seeded 2x2 batch mosaics (see module)."""

    name = "focus"
    # Mosaic tiles are told apart by their labels, which must be classes of the model it explains.
    needs = Needs(labels=True, multi_label="tiles share no label with the anchor's")
    higher_is_better: ClassVar[dict[str, bool]] = {"focus": True}
    batch_dependent = True  # mosaics are built from the other images of the batch

    def __init__(self, device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__(device)
        self.seed = int(seed)
        for state in ("total", "images", "skipped", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        labels = [list(s.labels) for s in batch.samples]
        outputs = batch.logits.shape[-1]
        bad = [c for own in labels for c in own[:1] if not 0 <= c < outputs]
        if bad:
            raise ValueError(
                f"focus explains each image's label, but label {bad[0]} is not a class of model "
                f"{batch.bundle.name} (0..{outputs - 1}); use a dataset in the model's label space"
            )
        plans = plan_mosaics(labels, [s.image_id for s in batch.samples], self.seed)
        used = [i for i, p in enumerate(plans) if p is not None]
        scores: dict[int, float] = {}
        degenerate_of: dict[int, bool] = {}
        if used:
            chosen = [plans[i] for i in used]
            mosaics = build_mosaics(batch.inputs, chosen)  # type: ignore[arg-type]
            targets = torch.tensor([[labels[i][0]] for i in used], dtype=torch.long, device=mosaics.device)
            raw = batch.explainer.explain(mosaics, targets).maps[:, 0].to(self.device)
            degenerate = degenerate_rows(raw)
            maps = upsample(raw, tuple(mosaics.shape[-2:]))
            flags = torch.tensor([p[1] for p in chosen], device=self.device)  # type: ignore[index]
            values = torch.full((len(used),), 0.5, dtype=torch.float64, device=self.device)
            if bool((~degenerate).any()):
                values[~degenerate] = quadrant_share(maps[~degenerate], flags[~degenerate])
            self.total = self.total + values.sum()
            self.images = self.images + len(used)
            self.degenerate = self.degenerate + degenerate.sum().double()
            scores = dict(zip(used, values.cpu().tolist(), strict=True))
            degenerate_of = dict(zip(used, degenerate.cpu().tolist(), strict=True))
        self.skipped = self.skipped + (len(plans) - len(used))
        records = []
        for i, plan in enumerate(plans):
            tiles = [batch.samples[j].image_id for j in plan[0]] if plan else None
            records.append(
                self.record(
                    focus=scores.get(i),
                    tiles=tiles,
                    target_tiles=plan[1] if plan else None,
                    degenerate=degenerate_of.get(i),
                )
            )
        return records

    def compute(self) -> dict[str, float]:
        return {
            "focus": safe_ratio(self.total, self.images),  # NaN without a mosaic: no number, not 0
            "images": float(self.images),
            "skipped": float(self.skipped),
            "degenerate_maps": float(self.degenerate),
        }

    def empty_reason(self, values: Mapping[str, float]) -> str:
        skipped = int(values.get("skipped", 0))
        if not skipped:
            return "no image was scored (no image evaluated)"
        return (
            f"no mosaic: none of the {skipped} image(s) had a label and two images in its batch without "
            f"that label (e.g. batches of 1 image or of 2 classes); use a larger batch_size"
        )
