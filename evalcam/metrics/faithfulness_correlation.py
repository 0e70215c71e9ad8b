"""Faithfulness correlation (Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model
Explanations", IJCAI 2020).

For the top-1 predicted class ``c`` of each image, ``runs`` random subsets of ``subset_size`` pixels
(all channels) are drawn (a generator seeded by ``seed`` and the image id); each subset is replaced by the
``baseline`` and the drop ``f(x) - f(x_S)`` of the class score is recorded next to the sum of the
upsampled map over ``S``. The image's value is the Pearson correlation of the two over the runs (higher is
better). A degenerate map (constant, NaN, ...) or a constant drop has no correlation: it scores 0 and is
counted in ``degenerate_maps``.

Quantus's ``FaithfulnessCorrelation`` draws subsets of single *features* of the channel-broadcast map
(channel values of one pixel can be split); with subsets of whole pixels (indices of all channels of a
pixel, ``subset_size x C`` features) it computes the same number
(``tests/test_metrics_faithfulness_family_quantus.py``).

The drops do not depend on the map (the subsets are drawn from the image's seed): with ``cache_dir`` set
they are kept on disk (:mod:`evalcam.metrics.score_cache`) and the methods of a sweep over one model and
dataset share them.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.imputation import (
    Baseline,
    check_count,
    image_keys,
    image_seed,
    masked_scores,
)
from evalcam.metrics.perturbed_scores import class_scores, model_of
from evalcam.metrics.score_cache import ScoreCache, cached_rows, tensor_bytes
from evalcam.metrics.stats import pearson


def random_subsets(seeds: list[int], runs: int, pixels: int, size: int) -> torch.Tensor:
    """``[B, runs, size]`` pixel indices, each row drawn without replacement from ``0..pixels-1``."""
    out = torch.empty(len(seeds), runs, size, dtype=torch.long)
    for i, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        for r in range(runs):
            out[i, r] = torch.randperm(pixels, generator=generator)[:size]
    return out


class FaithfulnessCorrelation(FaithfulMetric):
    name = "faithfulness_correlation"
    keys: ClassVar[tuple[str, ...]] = ("pearson",)
    higher_is_better: ClassVar[dict[str, bool]] = {"pearson": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        runs: int = 100,
        subset_size: int = 224,
        baseline: str | float = "mean",
        score: str = "prob",
        chunk_size: int = 64,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(device)
        self.runs, self.subset_size = int(runs), int(subset_size)
        if self.runs < 2:
            raise ValueError(f"{self.name}: runs={runs} must be >= 2 to correlate")
        self.baseline, self.score, self.chunk_size, self.seed = baseline, score, int(chunk_size), int(seed)
        self.cache = ScoreCache(cache_dir, self.name) if cache_dir else None

    def subsets(self, batch: EvalBatch) -> torch.Tensor:
        height, width = batch.inputs.shape[-2:]
        size = check_count(self.name, "subset_size", self.subset_size, int(height * width))
        seeds = [image_seed(self.seed, key) for key in image_keys(batch)]
        return random_subsets(seeds, self.runs, int(height * width), size)

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cams, degenerate = input_cams(batch)
        inputs = batch.inputs
        height, width = inputs.shape[-2:]
        subsets = self.subsets(batch).to(inputs.device)

        def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            mask = torch.zeros(len(image), height * width, dtype=torch.bool, device=inputs.device)
            mask.scatter_(1, subsets[image, k], True)
            return mask.view(-1, 1, height, width)

        classes = batch.pred_classes[:, 0].to(inputs.device)
        model, baseline = model_of(batch), Baseline(self.baseline, batch, self.seed)

        def compute(index: torch.Tensor) -> torch.Tensor:
            def masks(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
                return mask_of(index[image], k)

            def fills(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
                return baseline(index[image], k)

            chosen = inputs[index]
            return masked_scores(
                model, chosen, classes[index], self.runs, masks, fills, self.score, self.chunk_size
            )

        # The copies derive from the image's seed (its subsets, noise) and, for a fixed baseline, its row.
        extras = None
        if self.cache is not None:
            extras = [
                repr(seed).encode() + (b"" if baseline.fixed is None else tensor_bytes(baseline.fixed[i]))
                for i, seed in enumerate(baseline.seeds)
            ]
        settings = (self.runs, self.subset_size, str(self.baseline), self.score)
        perturbed = cached_rows(self.cache, batch, model, classes, settings, (self.runs,), compute, extras)
        clean = class_scores(batch.logits.to(inputs.device), classes, self.score).double()
        drops = clean[:, None] - perturbed
        sums = cams.flatten(1).gather(1, subsets.flatten(1)).view_as(subsets).sum(-1)
        rho, valid = pearson(sums, drops)
        valid = valid & ~degenerate.to(valid.device)
        return {"pearson": torch.where(valid, rho, torch.zeros_like(rho))}, degenerate | ~valid
