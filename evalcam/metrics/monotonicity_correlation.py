"""Monotonicity correlation (Nguyen & Martínez, "On Quantitative Aspects of Model Interpretability",
arXiv 2007.07584, 2020).

For the top-1 predicted class ``c`` of each image, pixels are ordered by the upsampled map and cut into
``steps`` groups of ``H*W/steps`` pixels. Each group alone is replaced by the ``baseline`` (the paper:
uniform noise, drawn ``samples`` times, seeded per image, group and draw) and the expected squared change
of the class score relative to it, ``v_g = mean_s (f(x_{g,s}) - f(x))^2 / f(x)^2`` (the ``1/f(x)^2`` factor
is left out when ``|f(x)| < eps``), is recorded next to the group's summed saliency. The value is the
Spearman rank correlation of the two over the groups (higher is better: more relevant features should
matter more). Degenerate maps and constant variances score 0 and are counted in ``degenerate_maps``.

Quantus's ``MonotonicityCorrelation`` takes the absolute value of the map first (``abs=True``) and draws
uniform noise in input space from the global NumPy state; with a deterministic baseline and ``samples=1``
the numbers agree with it (``tests/test_metrics_faithfulness_family_quantus.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.faithfulness_estimate import group_sums
from evalcam.metrics.imputation import Baseline, check_count, masked_scores, pixel_groups
from evalcam.metrics.perturbed_scores import class_scores, model_of
from evalcam.metrics.stats import spearman


class MonotonicityCorrelation(FaithfulMetric):
    name = "monotonicity_correlation"
    keys: ClassVar[tuple[str, ...]] = ("spearman",)
    higher_is_better: ClassVar[dict[str, bool]] = {"spearman": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        steps: int = 49,
        samples: int = 5,
        baseline: str | float = "uniform",
        eps: float = 1e-5,
        score: str = "prob",
        chunk_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(device)
        self.steps, self.samples, self.eps = int(steps), int(samples), float(eps)
        if self.samples < 1:
            raise ValueError(f"{self.name}: samples={samples} must be >= 1")
        self.baseline, self.score, self.chunk_size, self.seed = baseline, score, int(chunk_size), int(seed)

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cams, degenerate = input_cams(batch)
        steps = check_count(self.name, "steps", self.steps, cams.shape[-2] * cams.shape[-1])
        if steps < 2:
            raise ValueError(f"{self.name}: steps={steps} must be >= 2 to correlate")
        groups = pixel_groups(cams, steps, descending=False).to(batch.inputs.device)
        samples = self.samples

        def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return groups[image].unsqueeze(1) == (k // samples).view(-1, 1, 1, 1)

        classes = batch.pred_classes[:, 0].to(batch.inputs.device)
        perturbed = masked_scores(
            model_of(batch),
            batch.inputs,
            classes,
            steps * samples,
            mask_of,
            Baseline(self.baseline, batch, self.seed, per_copy=True),
            self.score,
            self.chunk_size,
        ).view(-1, steps, samples)
        clean = class_scores(batch.logits.to(batch.inputs.device), classes, self.score).double()
        scale = torch.where(clean.abs() >= self.eps, clean.abs().clamp_min(self.eps) ** -2, 1.0)
        variance = ((perturbed - clean[:, None, None]) ** 2).mean(-1) * scale[:, None]
        rho, valid = spearman(group_sums(cams, groups, steps), variance)
        valid = valid & ~degenerate.to(valid.device)
        return {"spearman": torch.where(valid, rho, torch.zeros_like(rho))}, degenerate | ~valid
