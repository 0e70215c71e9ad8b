"""The examples figure keeps its title clear of the panel headers (constrained layout reserves the room)."""

from __future__ import annotations

import torch

from evalcam import figures
from evalcam.figures import ExampleRow, example_grid


def test_examples_title_does_not_overlap_the_panel_titles(tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    rows = [
        ExampleRow(
            image=torch.full((3, 120, 160), 128, dtype=torch.uint8),
            cam=torch.rand(7, 7, generator=torch.Generator().manual_seed(i)),
            title=f"{i}: tabby cat",
            pred_box=[10, 10, 80, 90],
            gt_boxes=[[20, 20, 100, 100]],
        )
        for i in range(2)
    ]
    example_grid(rows, tmp_path / "examples.png", suptitle="scorecam·efficientnet_lite0·imagenet_val")
    (fig,) = kept
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    headers = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert all(title.y0 >= header.y1 for header in headers)  # the title sits above every header
    assert (tmp_path / "examples.png").is_file()
