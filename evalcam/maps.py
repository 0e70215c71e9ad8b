"""Map post-processing shared by metrics and figures."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``[..., h, w]`` maps to ``size`` = (H, W) (the Grad-CAM paper's upsampling)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each ``[h, w]`` map to [0, 1]; constant maps become all zeros."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    hi = flat.amax(-1, keepdim=True)
    out = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return out.view_as(maps)


def is_degenerate(maps: torch.Tensor) -> torch.Tensor:
    """True per ``[h, w]`` map that carries no localization signal: non-finite values, or max <= 0."""
    flat = maps.flatten(-2)
    return ~torch.isfinite(flat).all(-1) | (flat.amax(-1) <= 0)
