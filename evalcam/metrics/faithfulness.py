"""Faithfulness as rank correlation with occlusion sensitivity (Grad-CAM paper, Selvaraju et al. ICCV 2017,
"Faithfulness vs. Interpretability": rank correlation between the method's map and patch-occlusion maps,
the occlusion map being the drop in the class score when a patch is masked; Zeiler & Fergus 2014).

For the top-1 predicted class ``c`` of each image:

1. every ``patch_size`` x ``patch_size`` window on a ``stride`` grid of the network input is filled with
   ``fill`` (default: the mean colour, 0 in normalized input space); the grid's last row/column is
   aligned to the border so every pixel is covered;
2. ``drop = score_c(image) - score_c(occluded)`` with ``score`` the pre-softmax class score (``logit``,
   as in Grad-CAM) or the softmax probability (``prob``);
3. the occlusion map at a pixel is the mean drop of the windows covering it (captum ``Occlusion``'s
   convention);
4. the method's map is upsampled bilinearly to the input and the Spearman rank correlation (average ranks
   for ties, ``scipy.stats.spearmanr``) over all pixels is the image's score; ``spearman`` is the mean.

The paper does not state the patch size or stride; both are parameters (defaults 45 and 15 px on a
224 px input). By default (``incremental``) each occluded copy re-computes only the part of each layer
the window can reach, reusing the clean pass elsewhere (:mod:`evalcam.metrics.incremental`; same scores
up to float round-off, 4-5x fewer operations on EfficientNet-Lite0 with the default window); models
``torch.fx`` cannot trace, and ``incremental=false``, score full copies, ``chunk_size`` per forward.
A constant or non-finite map (method or occlusion) has no ranking: it scores 0 and is counted in
``degenerate_maps`` (see :mod:`evalcam.metrics.stats`).
"""

from __future__ import annotations

from typing import Any

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.incremental import Box, IncrementalModel, incremental_model
from evalcam.metrics.perturb import class_scores, fill_value, model_of, normalization, scores_of_items
from evalcam.metrics.stats import flat_maps, spearman


def patch_origins(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` px, plus one flush with the far border."""
    patch = min(int(patch), length)
    starts = list(range(0, length - patch + 1, max(1, int(stride))))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def occlusion_boxes(size: tuple[int, int], patch: int, stride: int) -> list[Box]:
    """``(y0, y1, x0, x1)`` of every occlusion window, in raster order of their top-left corners."""
    height, width = size
    ph, pw = min(patch, height), min(patch, width)
    return [
        (y, y + ph, x, x + pw)
        for y in patch_origins(height, patch, stride)
        for x in patch_origins(width, patch, stride)
    ]


def occlusion_windows(boxes: list[Box], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Bool ``[P, H, W]``: one mask per box."""
    windows = torch.zeros(len(boxes), *size, dtype=torch.bool, device=device)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        windows[i, y0:y1, x0:x1] = True
    return windows


def occlusion_map(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    boxes: list[Box],
    fill: torch.Tensor,
    score: str = "logit",
    chunk_size: int = 64,
    incremental: bool = False,
) -> torch.Tensor:
    """``[B, H, W]`` mean drop of ``score`` of ``classes`` over the occlusion windows covering each pixel.

    ``incremental``: re-compute only each window's receptive-field cone (:mod:`evalcam.metrics.incremental`)
    where the model can be traced; otherwise every occluded copy is a full forward, ``chunk_size`` per call.
    """
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    executor = incremental_model(model) if incremental else None
    if executor is not None:
        clean, occluded = _incremental_scores(executor, inputs, classes, boxes, fill, score, chunk_size)
    else:
        clean, occluded = _dense_scores(model, inputs, classes, boxes, fill, score, chunk_size)
    drops = clean[:, None] - occluded.to(clean.device)
    weights = occlusion_windows(boxes, size, inputs.device).double()
    return torch.einsum("bp,phw->bhw", drops, weights) / weights.sum(0).clamp_min(1)


def _dense_scores(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    boxes: list[Box],
    fill: torch.Tensor,
    score: str,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    count = len(boxes)
    windows = occlusion_windows(boxes, (int(inputs.shape[-2]), int(inputs.shape[-1])), inputs.device)
    with torch.no_grad():
        clean = class_scores(model(inputs), classes, score).double()

    def inputs_of(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=inputs.device)
        image, window = index // count, index % count
        return torch.where(windows[window][:, None], fill, inputs[image])

    item_classes = classes.repeat_interleave(count)
    occluded = scores_of_items(model, len(item_classes), inputs_of, item_classes, score, chunk_size)
    return clean, occluded.view(-1, count)


def _incremental_scores(
    executor: IncrementalModel,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    boxes: list[Box],
    fill: torch.Tensor,
    score: str,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Every node of the clean pass is cached for the images of a group: bounded, like a chunk of
    # occluded copies, by ``chunk_size`` (an image's cache is a few times its activations).
    group = max(1, int(chunk_size) // 4)
    clean_scores, occluded_scores = [], []
    for start in range(0, inputs.shape[0], group):
        images, targets = inputs[start : start + group], classes[start : start + group]
        cache = executor.clean_pass(images)
        clean_scores.append(class_scores(executor.output_of(cache), targets, score).double())
        per_window = [
            class_scores(executor.occluded(cache, box, fill), targets, score).double() for box in boxes
        ]
        occluded_scores.append(torch.stack(per_window, dim=1))
        del cache
    return torch.cat(clean_scores), torch.cat(occluded_scores)


class OcclusionFaithfulness(Metric):
    name = "faithfulness"
    pred_topk = 1

    def __init__(
        self,
        device: torch.device | str = "cpu",
        patch_size: int = 45,
        stride: int = 15,
        fill: str | float = "mean",
        score: str = "logit",
        chunk_size: int = 64,
        incremental: bool = True,
    ) -> None:
        super().__init__(device)
        self.patch_size, self.stride = int(patch_size), int(stride)
        self.incremental = bool(incremental)
        self.fill, self.score, self.chunk_size = fill, score, int(chunk_size)
        for state in ("spearman_sum", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        inputs = batch.inputs
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        mean, std = normalization(batch)
        classes = batch.pred_classes[:, 0].to(inputs.device)
        occlusion = occlusion_map(
            model_of(batch),
            inputs,
            classes,
            occlusion_boxes(size, self.patch_size, self.stride),
            fill_value(self.fill, mean, std),
            self.score,
            self.chunk_size,
            self.incremental,
        )
        cams = upsample(batch.pred_maps[:, 0].to(inputs.device), size)
        rho, valid = spearman(cams, occlusion)
        # A constant map is judged before resampling, which leaves float ripples a ranking would order.
        valid = valid & ~flat_maps(batch.pred_maps[:, 0]).to(valid.device)
        rho = torch.where(valid, rho, torch.zeros_like(rho))
        self.spearman_sum = self.spearman_sum + rho.sum().to(self.device)
        self.images = self.images + len(rho)
        self.degenerate = self.degenerate + (~valid).sum().to(self.device)
        return [
            {
                "faithfulness.spearman": float(r),
                "faithfulness.class": int(c),
                "faithfulness.degenerate": not bool(v),
            }
            for r, c, v in zip(rho.tolist(), classes.tolist(), valid.tolist(), strict=True)
        ]

    def compute(self) -> dict[str, float]:
        return {
            "spearman": safe_ratio(self.spearman_sum, self.images),
            "images": float(self.images),
            "degenerate_maps": float(self.degenerate),
        }
