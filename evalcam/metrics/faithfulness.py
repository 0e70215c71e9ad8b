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
224 px input). Occluded copies are scored by :func:`evalcam.methods.occlusion.occluded_outputs`: on the
CPU (``incremental: auto``) each re-computes only the part of each layer its window can reach, reusing the
clean pass elsewhere (exact up to float round-off, 4-5x faster than full forwards on EfficientNet-Lite0);
on GPUs and with ``incremental=false``, full copies run ``chunk_size`` per forward.
With ``cache_dir`` set, occlusion maps are kept on disk (:class:`evalcam.metrics.score_cache.ScoreCache`) and
shared by every run that scores the same model, images and classes (the methods of a sweep).
A constant or non-finite map (method or occlusion) has no ranking: it scores 0 and is counted in
``degenerate_maps`` (see :mod:`evalcam.metrics.stats`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.methods.occlusion import occluded_outputs, occlusion_boxes, spread_drops, use_incremental
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.perturbed_scores import class_scores, fill_value, model_of, normalization
from evalcam.metrics.score_cache import ScoreCache, cached_rows
from evalcam.metrics.stats import flat_maps, spearman
from evalcam.models.incremental import Box

#: bump when the occlusion map's definition changes, so that old cached maps are not read
OCCLUSION_VERSION = 1


def occlusion_map(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    boxes: list[Box],
    fill: torch.Tensor,
    score: str = "logit",
    chunk_size: int = 64,
    incremental: bool | str = False,
) -> torch.Tensor:
    """``[B, H, W]`` mean drop of ``score`` of ``classes`` over the occlusion windows covering each pixel.

    ``incremental``: re-compute only each window's receptive-field cone (:mod:`evalcam.models.incremental`)
    where the model can be traced; otherwise every occluded copy is a full forward, ``chunk_size`` per call.
    """
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    clean, occluded = occluded_outputs(model, inputs, boxes, fill, chunk_size, incremental)
    count = len(boxes)
    clean_scores = class_scores(clean, classes, score).double()
    occluded_scores = class_scores(occluded.flatten(0, 1), classes.repeat_interleave(count), score).double()
    drops = clean_scores[:, None] - occluded_scores.view(-1, count).to(clean_scores.device)
    return spread_drops(drops, boxes, size)


class OcclusionFaithfulness(Metric):
    name = "faithfulness"
    higher_is_better: ClassVar[dict[str, bool]] = {"spearman": True}
    pred_topk = 1

    def __init__(
        self,
        device: torch.device | str = "cpu",
        patch_size: int = 45,
        stride: int = 15,
        fill: str | float = "mean",
        score: str = "logit",
        chunk_size: int = 64,
        incremental: bool | str = "auto",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(device)
        self.patch_size, self.stride = int(patch_size), int(stride)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.incremental = incremental
        self.cache = ScoreCache(cache_dir, self.name) if cache_dir else None
        self.fill, self.score, self.chunk_size = fill, score, int(chunk_size)
        for state in ("spearman_sum", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        inputs = batch.inputs
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        mean, std = normalization(batch)
        classes = batch.pred_classes[:, 0].to(inputs.device)
        model, fill = model_of(batch), fill_value(self.fill, mean, std)
        boxes = occlusion_boxes(size, self.patch_size, self.stride)
        settings = (OCCLUSION_VERSION, self.patch_size, self.stride, self.score, fill.tolist())

        def compute(index: torch.Tensor) -> torch.Tensor:
            chosen = inputs[index]
            return occlusion_map(
                model, chosen, classes[index], boxes, fill, self.score, self.chunk_size, self.incremental
            )

        occlusion = cached_rows(self.cache, batch, model, classes, settings, size, compute)
        cams = upsample(batch.pred_maps[:, 0].to(inputs.device), size)
        rho, valid = spearman(cams, occlusion)
        # A constant map is judged before resampling, which leaves float ripples a ranking would order.
        valid = valid & ~flat_maps(batch.pred_maps[:, 0]).to(valid.device)
        rho = torch.where(valid, rho, torch.zeros_like(rho))
        self.spearman_sum = self.spearman_sum + rho.sum().to(self.device)
        self.images = self.images + len(rho)
        self.degenerate = self.degenerate + (~valid).sum().to(self.device)
        return [
            self.record({"spearman": float(r), "class": int(c), "degenerate": not bool(v)})
            for r, c, v in zip(rho.tolist(), classes.tolist(), valid.tolist(), strict=True)
        ]

    def compute(self) -> dict[str, float]:
        return {
            "spearman": safe_ratio(self.spearman_sum, self.images),
            "images": float(self.images),
            "degenerate_maps": float(self.degenerate),
        }
