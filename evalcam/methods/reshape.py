"""Turn a layer's raw output into the ``[B, C, h, w]`` grid the CAM methods work on.

Transformers emit tokens ``[B, T, C]``: ``T = prefix + h * w`` with one class token (ViT), two (DeiT with a
distillation token) or none. :func:`tokens_to_grid` drops the prefix and lays the patch tokens out on their
square grid, the same convention as pytorch-grad-cam's ``vit_reshape_transform``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Reshape = Callable[[torch.Tensor], torch.Tensor]


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, prefix + s*s, C] -> [B, C, s, s]`` with ``s = floor(sqrt(T))``: the leading tokens that do not
    fit the square grid (class/distillation tokens) are dropped."""
    if tokens.ndim != 3:
        raise ValueError(
            f"reshape=vit expects tokens [B, T, C] but the target layer gave shape {tuple(tokens.shape)}; "
            f"pick a token layer or set +method.params.reshape=none"
        )
    side = math.isqrt(tokens.shape[1])
    prefix = tokens.shape[1] - side * side
    grid = tokens[:, prefix:, :].reshape(tokens.shape[0], side, side, tokens.shape[2])
    return grid.permute(0, 3, 1, 2)


def channels_last_to_first(features: torch.Tensor) -> torch.Tensor:
    """``[B, h, w, C] -> [B, C, h, w]`` (Swin-style feature maps)."""
    if features.ndim != 4:
        raise ValueError(
            f"reshape=nhwc expects [B, h, w, C] but the target layer gave shape {tuple(features.shape)}; "
            f"pick a Swin stage/block layer or set +method.params.reshape=none"
        )
    return features.permute(0, 3, 1, 2)


RESHAPES: dict[str, Reshape] = {
    "vit": tokens_to_grid,
    "tokens": tokens_to_grid,
    "nhwc": channels_last_to_first,
}


def get_reshape(name: str) -> Reshape | None:
    """The reshape called ``name``; ``"none"`` for a layer that already outputs ``[B, C, h, w]``."""
    if name.lower() in ("none", "null", ""):
        return None
    if name not in RESHAPES:
        raise ValueError(f"unknown reshape {name!r}; available: {', '.join(sorted(RESHAPES))}")
    return RESHAPES[name]
