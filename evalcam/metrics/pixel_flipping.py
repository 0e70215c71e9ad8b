"""Pixel flipping (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE 2015) with AOPC (Samek et al. 2017).

For the top-1 predicted class ``c`` of each image, the method's map is upsampled bilinearly to the network
input and pixels are ordered by decreasing saliency (``order: morf``; ``lerf``: increasing; ties by raster
order). The ordered pixels are cut into ``steps`` runs of ``H*W/steps`` pixels; run after run is replaced
(cumulatively, all channels) by the ``baseline`` and the class score (``prob`` or ``logit``) is read before
the first and after every run: the curve ``f_0 .. f_steps`` (``f_0`` is the clean score of the batch).

Logged per image: ``auc``, the normalized area under the curve on ``x = k / steps`` (lower is better for
MoRF) and ``aopc = mean_k (f_0 - f_k)`` over ``k = 0..steps`` (Samek et al.'s AOPC; higher is better for
MoRF). Quantus's ``PixelFlipping`` returns ``f_1 .. f_steps`` (no clean point) with its "black" baseline
the image minimum; with the same baseline value, maps without ties and ``features_in_step = 3 * H*W/steps``
its curve equals ``f_1 .. f_steps`` here (``tests/test_metrics_faithfulness_family_quantus.py``).

A degenerate map (NaN/Inf, constant, or negative everywhere) is counted in ``degenerate_maps`` and still
scored: non-finite values count as 0 and ties fall back to raster order (see
:mod:`evalcam.metrics.faithful_base`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from evalcam.methods.occlusion import use_incremental
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.deletion_insertion import curve_auc
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.imputation import Baseline, check_count, group_scores, pixel_groups
from evalcam.metrics.perturbed_scores import class_scores, model_of

ORDERS = ("morf", "lerf")


def check_order(metric: str, order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"{metric}: order={order!r} is unknown; use 'morf' or 'lerf'")
    return order


class PixelFlipping(FaithfulMetric):
    name = "pixel_flipping"
    keys: ClassVar[tuple[str, ...]] = ("auc", "aopc")
    higher_is_better: ClassVar[dict[str, bool]] = {"auc": False, "aopc": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        steps: int = 224,
        order: str = "morf",
        baseline: str | float = "mean",
        score: str = "prob",
        chunk_size: int = 64,
        seed: int = 0,
        incremental: bool | str = "auto",
    ) -> None:
        super().__init__(device)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.incremental = incremental
        self.steps, self.order = int(steps), check_order(self.name, order)
        if self.order == "lerf":
            self.higher_is_better = {"auc": True, "aopc": False}
        self.baseline, self.score, self.chunk_size, self.seed = baseline, score, int(chunk_size), int(seed)

    def curves(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, steps + 1]`` along the flipping and the degenerate-map flags."""
        cams, degenerate = input_cams(batch)
        steps = check_count(self.name, "steps", self.steps, cams.shape[-2] * cams.shape[-1])
        groups = pixel_groups(cams, steps, descending=self.order == "morf")
        classes = batch.pred_classes[:, 0].to(batch.inputs.device)
        flipped = group_scores(
            model_of(batch),
            batch.inputs,
            classes,
            groups,
            torch.arange(1, steps + 1),
            Baseline(self.baseline, batch, self.seed),
            self.score,
            self.chunk_size,
            cumulative=True,
            incremental=self.incremental,
        )
        clean = class_scores(batch.logits.to(batch.inputs.device), classes, self.score).double()
        return torch.cat([clean[:, None], flipped], 1), degenerate

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        curve, degenerate = self.curves(batch)
        aopc = (curve[:, :1] - curve).mean(1)
        return {"auc": curve_auc(curve), "aopc": aopc}, degenerate
