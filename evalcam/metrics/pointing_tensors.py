"""The pointing games' per-image work as tensor operations over all evaluated classes of an image at once.

The protocols are those of :mod:`evalcam.metrics.pointing` (TorchRay's pointing game, Score-CAM's energy
pointing game); this module only computes them without a Python loop over classes and without moving maps
off their device: one bilinear resize of the image's class maps, one argmax, one distance test against the
stacked class regions, one relevance-mass reduction. A loop over images remains, since every image has its
own size and annotations.
"""

from __future__ import annotations

import torch

from evalcam.data.types import Sample
from evalcam.maps import upsample
from evalcam.metrics.mask_scores import relevance_mass
from evalcam.metrics.regions import class_mask
from evalcam.metrics.stats import flat_maps


def class_cams(maps: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``[n, h, w]`` resized to the image ``[n, H, W]`` (same device), and ``[n]`` flags of maps with
    no usable maximum (non-finite or constant, judged before and after resizing)."""
    cams = upsample(maps, size)
    return cams, flat_maps(maps) | flat_maps(cams)


def class_regions(sample: Sample, classes: list[int], device: torch.device) -> torch.Tensor:
    """Bool ``[n, H, W]`` regions of ``classes`` (mask, else union of boxes) on ``device``."""
    height, width = sample.size
    if not classes:
        return torch.zeros(0, height, width, dtype=torch.bool, device=device)
    return torch.stack([class_mask(sample, cls) for cls in classes]).to(device)


def argmax_points(cams: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` ``(x, y)`` of each map's maximum, the first in raster order on ties (TorchRay)."""
    index = cams.flatten(1).argmax(1)
    width = cams.shape[-1]
    return torch.stack([index % width, index // width], 1)


def points_hit(points: torch.Tensor, regions: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``[n]``: a pixel of ``regions[i]`` lies at distance ``< tolerance`` from ``points[i]`` (TorchRay's
    disc test; for a union of boxes it equals the nearest-point-of-the-box shortcut)."""
    height, width = regions.shape[-2:]
    ys = torch.arange(height, device=regions.device).view(1, -1, 1)
    xs = torch.arange(width, device=regions.device).view(1, 1, -1)
    px, py = points[:, 0].view(-1, 1, 1), points[:, 1].view(-1, 1, 1)
    near = ((xs - px) ** 2 + (ys - py) ** 2).double() < float(tolerance) ** 2
    return (near & regions).flatten(1).any(1)


def energy_shares(
    cams: torch.Tensor, regions: torch.Tensor, flat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n]`` shares of positive energy inside the regions and ``[n]`` degenerate flags (flat, or no
    positive value); degenerate rows score 0."""
    degenerate = flat | ~(cams > 0).flatten(1).any(1)
    shares = relevance_mass(cams, regions, positive=True).double()
    return torch.where(degenerate, torch.zeros_like(shares), shares), degenerate
