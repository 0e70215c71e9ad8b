"""Faithfulness estimate (Alvarez-Melis & Jaakkola, "Towards Robust Interpretability with
Self-Explaining Neural Networks", NeurIPS 2018).

For the top-1 predicted class ``c`` of each image, pixels are ordered by decreasing saliency of the
upsampled map and cut into ``steps`` groups of ``H*W/steps`` pixels ("features"). Each group alone is
replaced by the ``baseline`` (not cumulatively) and the drop ``f(x) - f(x_{-g})`` is recorded next to the
group's summed saliency; the value is the Pearson correlation of the two over the groups (higher is
better). Degenerate maps and constant drops score 0 and are counted in ``degenerate_maps``.

Quantus's ``FaithfulnessEstimate`` uses groups of ``features_in_step`` entries of the channel-broadcast
map; with maps without ties and ``features_in_step = C x H*W/steps`` the groups are the same pixels and the
numbers agree (``tests/test_metrics_faithfulness_family_quantus.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.imputation import Baseline, check_count, group_scores, pixel_groups
from evalcam.metrics.perturbed_scores import class_scores, model_of
from evalcam.metrics.stats import pearson


def group_sums(cams: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """``[B, count]`` summed saliency of each group of ``groups`` ``[B, H, W]``."""
    sums = torch.zeros(cams.shape[0], count, dtype=torch.float64, device=cams.device)
    return sums.scatter_add_(1, groups.flatten(1), cams.flatten(1).double())


class FaithfulnessEstimate(FaithfulMetric):
    name = "faithfulness_estimate"
    keys: ClassVar[tuple[str, ...]] = ("pearson",)
    higher_is_better: ClassVar[dict[str, bool]] = {"pearson": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        steps: int = 224,
        baseline: str | float = "mean",
        score: str = "prob",
        chunk_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(device)
        self.steps = int(steps)
        self.baseline, self.score, self.chunk_size, self.seed = baseline, score, int(chunk_size), int(seed)

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cams, degenerate = input_cams(batch)
        steps = check_count(self.name, "steps", self.steps, cams.shape[-2] * cams.shape[-1])
        if steps < 2:
            raise ValueError(f"{self.name}: steps={steps} must be >= 2 to correlate")
        groups = pixel_groups(cams, steps)
        classes = batch.pred_classes[:, 0].to(batch.inputs.device)
        perturbed = group_scores(
            model_of(batch),
            batch.inputs,
            classes,
            groups,
            torch.arange(steps),
            Baseline(self.baseline, batch, self.seed),
            self.score,
            self.chunk_size,
            cumulative=False,
        )
        clean = class_scores(batch.logits.to(batch.inputs.device), classes, self.score).double()
        rho, valid = pearson(group_sums(cams, groups, steps), clean[:, None] - perturbed)
        valid = valid & ~degenerate.to(valid.device)
        return {"pearson": torch.where(valid, rho, torch.zeros_like(rho))}, degenerate | ~valid
