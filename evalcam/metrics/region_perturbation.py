"""Region perturbation with AOPC (Samek et al., "Evaluating the Visualization of What a Deep Neural
Network Has Learned", IEEE TNNLS 2017).

For the top-1 predicted class ``c``, the input is cut into a grid of ``patch_size`` x ``patch_size``
regions, ranked by the summed saliency of the upsampled map (``order: morf``, decreasing; ``lerf``,
increasing; ties by raster order). The first ``regions`` regions are replaced one after another
(cumulatively) by the ``baseline`` (the paper: uniform noise; ``uniform`` draws it in pixel units, seeded
per image and step) and the class score is read after each: ``f_0`` (clean) .. ``f_L``.

Logged per image: ``aopc = 1/(L+1) sum_{k=0..L} (f_0 - f_k)`` (the paper's AOPC, higher is better for
MoRF) and ``final_drop = f_0 - f_L``. Quantus's ``RegionPerturbation`` returns the drops ``f_0 - f_k`` for
``k = 1..L`` (its AOPC would be their mean, i.e. ``(L+1)/L`` times the paper's); the parity test pins this.

A degenerate map (NaN/Inf, constant, or negative everywhere) is counted in ``degenerate_maps`` and still
scored: non-finite values count as 0 and ties fall back to raster order (see
:mod:`evalcam.metrics.faithful_base`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from evalcam.methods.occlusion import use_incremental
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.imputation import Baseline, check_count, group_scores, patch_groups
from evalcam.metrics.perturbed_scores import class_scores, model_of
from evalcam.metrics.pixel_flipping import check_order


class RegionPerturbation(FaithfulMetric):
    name = "region_perturbation"
    keys: ClassVar[tuple[str, ...]] = ("aopc", "final_drop")
    higher_is_better: ClassVar[dict[str, bool]] = {"aopc": True, "final_drop": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        patch_size: int = 8,
        regions: int = 100,
        order: str = "morf",
        baseline: str | float = "uniform",
        score: str = "prob",
        chunk_size: int = 64,
        seed: int = 0,
        incremental: bool | str = "auto",
    ) -> None:
        super().__init__(device)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.incremental = incremental
        self.patch_size, self.regions = int(patch_size), int(regions)
        if self.patch_size < 1:
            raise ValueError(f"{self.name}: patch_size={patch_size} must be >= 1 pixel")
        self.order = check_order(self.name, order)
        if self.order == "lerf":
            self.higher_is_better = {"aopc": False, "final_drop": False}
        self.baseline, self.score, self.chunk_size, self.seed = baseline, score, int(chunk_size), int(seed)

    def curves(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, regions + 1]`` (clean first) and the degenerate-map flags."""
        cams, degenerate = input_cams(batch)
        groups, count = patch_groups(cams, self.patch_size, descending=self.order == "morf")
        regions = check_count(self.name, "regions", self.regions, count, "patches")
        classes = batch.pred_classes[:, 0].to(batch.inputs.device)
        perturbed = group_scores(
            model_of(batch),
            batch.inputs,
            classes,
            groups,
            torch.arange(1, regions + 1),
            Baseline(self.baseline, batch, self.seed),
            self.score,
            self.chunk_size,
            cumulative=True,
            incremental=self.incremental,
        )
        clean = class_scores(batch.logits.to(batch.inputs.device), classes, self.score).double()
        return torch.cat([clean[:, None], perturbed], 1), degenerate

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        curve, degenerate = self.curves(batch)
        drops = curve[:, :1] - curve
        return {"aopc": drops.mean(1), "final_drop": drops[:, -1]}, degenerate
