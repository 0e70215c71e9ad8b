"""A model together with what it needs to be evaluated: preprocessing, class names, default CAM layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Preprocess:
    """Image -> network input. ``resize="squash"`` resizes the whole image to ``size`` (no crop), so a map
    over the input covers the whole image and upsamples straight back onto it (the WSOL convention)."""

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "squash"

    def __call__(self, images: Sequence[torch.Tensor], device: torch.device | str) -> torch.Tensor:
        if self.resize != "squash":
            raise ValueError(f"unknown resize mode {self.resize!r}; supported: squash")
        out = []
        for img in images:
            x = img.to(device, non_blocking=True).float().div_(255.0)[None]
            # Antialiasing matters when shrinking large photos; it matches PIL's resize.
            out.append(F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False))
        batch = torch.cat(out)
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch - mean) / std


@dataclass
class ModelBundle:
    model: nn.Module
    name: str
    target_layer: str
    preprocess: Preprocess
    categories: list[str] = field(default_factory=list)
    weights: str = ""
    # Name of the final linear classifier, for CAM (which needs a GAP + FC head).
    classifier: str | None = None
    # How CAM methods read the target layer's output when it is not [B, C, h, w]: a name in
    # evalcam.methods.reshape.RESHAPES ("vit" tokens, "nhwc" Swin maps); None for CNNs.
    reshape: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
