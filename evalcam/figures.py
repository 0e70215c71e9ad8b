"""Pictures: heatmap overlays and the per-run example grid (image | overlay | boxes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from evalcam.maps import normalize, upsample


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """uint8 ``[3,H,W]`` image + map at any resolution -> HWC float RGB with a jet heatmap on top."""
    h, w = image.shape[-2:]
    heat = normalize(upsample(cam.detach().float().cpu(), (h, w)))
    heat = torch.nan_to_num(heat, nan=0.0).numpy()
    colored = plt.get_cmap("jet")(heat)[..., :3]
    rgb = image.permute(1, 2, 0).cpu().numpy() / 255.0
    return (1 - alpha) * rgb + alpha * colored


@dataclass
class ExampleRow:
    image: torch.Tensor
    cam: torch.Tensor
    title: str
    pred_box: Sequence[float] | None = None
    gt_boxes: list[Sequence[float]] = field(default_factory=list)


def _draw_box(ax, box: Sequence[float], color: str, style: str = "-") -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle(
            (x0 - 0.5, y0 - 0.5),
            x1 - x0 + 1,
            y1 - y0 + 1,
            fill=False,
            color=color,
            linewidth=2,
            linestyle=style,
        )
    )


def example_grid(rows: Sequence[ExampleRow], path: str | Path, suptitle: str = "") -> Path:
    """One row per image: the image | the map overlaid | predicted box (red) vs ground truth (green)."""
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=False):
        rgb = row.image.permute(1, 2, 0).cpu().numpy()
        ax_row[0].imshow(rgb)
        ax_row[0].set_title(row.title, fontsize=9)
        ax_row[1].imshow(overlay(row.image, row.cam))
        ax_row[1].set_title("map (top-1 class)", fontsize=9)
        ax_row[2].imshow(rgb)
        for gt in row.gt_boxes:
            _draw_box(ax_row[2], gt, "lime")
        if row.pred_box is not None:
            _draw_box(ax_row[2], row.pred_box, "red", "--")
        ax_row[2].set_title("pred box (red) vs ground truth (green)", fontsize=9)
        for ax in ax_row:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
