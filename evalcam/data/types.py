"""The one sample type every dataset yields.

Box convention everywhere in evalcam: ``[x0, y0, x1, y1]`` as 0-based pixel indices, inclusive on both
ends (the wsolevaluation / ILSVRC convention), in the coordinates of ``Sample.image``.
Area of a box is ``(x1 - x0 + 1) * (y1 - y0 + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Sample:
    """One image with its annotations.

    ``image`` is uint8 RGB ``[3, H, W]`` at the resolution the boxes refer to.
    ``boxes[c]`` is a float tensor ``[N, 4]`` of the instances of class ``c``; ``difficult[c]`` a bool
    tensor ``[N]`` aligned with it. ``masks[c]`` (when the dataset has masks) is a bool ``[H, W]`` union
    mask of class ``c``. ``labels`` are the classes present, in the dataset's label space; a class whose
    boxes were all unusable stays in ``labels`` without an entry in ``boxes``.
    """

    image: torch.Tensor
    image_id: str
    labels: list[int]
    boxes: dict[int, torch.Tensor] = field(default_factory=dict)
    difficult: dict[int, torch.Tensor] = field(default_factory=dict)
    masks: dict[int, torch.Tensor] | None = None
    orig_size: tuple[int, int] = (0, 0)
    #: annotation problems the loader fixed or dropped (clipped boxes, unknown classes, ...), one line each
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of ``image``."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])


@dataclass
class SkippedImage:
    """Stands in for an image that could not be read; the runner counts and lists it."""

    image_id: str
    reason: str


def collate_samples(batch: list[Sample | SkippedImage]) -> list[Sample | SkippedImage]:
    """Keep samples as a list: images differ in size and unreadable ones arrive as SkippedImage."""
    return list(batch)
