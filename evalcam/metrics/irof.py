"""IROF, Iterative Removal Of Features (Rieger & Hansen, "IROF: a low resource evaluation metric for
explanation methods", ICLR 2020 workshop AI4AH).

For the top-1 predicted class ``c``, the image (in pixel units) is cut into SLIC superpixels
(scikit-image ``slic(image, start_label=0, n_segments, compactness)``); segments are ranked by the mean
saliency of the upsampled map (decreasing; ties by label) and removed one after another (cumulatively),
replaced by the ``baseline`` (the paper: the mean value; ``image_mean``: the image's mean over pixels and
channels, as Quantus). The class score relative to the clean one, ``r_k = f_k / f_0`` for ``k = 0..n``
(``r_0 = 1``), is the degradation curve; IROF is the area over it, ``aoc = 1 - AUC`` with ``x = k / n``
(higher is better). Images have different segment counts: all their steps run in one stream of forwards.

Quantus's ``IROF`` (0.6) omits ``r_0`` and does not normalize the x-axis: it reports
``n - trapz(r_1..r_n)``, minus ``r_n / 2`` for images with fewer segments than the largest count of their
batch (it integrates over zero padding), so its value depends on the batch; its default mask replacement
also refuses colour images, and its "mean" baseline is the mean of the whole, already perturbed, batch.
The parity test pins all this against the curve here; the paper's area is over the normalized curve.

A degenerate map (NaN/Inf, constant, or negative everywhere) is counted in ``degenerate_maps`` and still
scored: non-finite values count as 0 and ties fall back to raster order (see
:mod:`evalcam.metrics.faithful_base`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from evalcam.methods.occlusion import use_incremental
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.deletion_insertion import curve_auc
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.imputation import Baseline, group_scores, region_rank, slic_segments
from evalcam.metrics.perturbed_scores import class_scores, model_of, normalization


class IROF(FaithfulMetric):
    name = "irof"
    keys: ClassVar[tuple[str, ...]] = ("aoc",)
    higher_is_better: ClassVar[dict[str, bool]] = {"aoc": True}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        n_segments: int = 100,
        compactness: float = 10.0,
        baseline: str | float = "image_mean",
        score: str = "prob",
        chunk_size: int = 64,
        seed: int = 0,
        incremental: bool | str = "auto",
    ) -> None:
        super().__init__(device)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.incremental = incremental
        self.n_segments, self.compactness = int(n_segments), float(compactness)
        if self.n_segments < 2:
            raise ValueError(f"{self.name}: n_segments={n_segments} must be >= 2")
        self.baseline, self.score, self.chunk_size, self.seed = baseline, score, int(chunk_size), int(seed)

    def segments(self, batch: EvalBatch) -> list[np.ndarray]:
        mean, std = normalization(batch)
        pixels = batch.inputs * std + mean
        return slic_segments(pixels, n_segments=self.n_segments, compactness=self.compactness)

    def curves(self, batch: EvalBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per image the relative scores ``r_0 .. r_n`` (``n`` its segment count), and degenerate flags."""
        cams, degenerate = input_cams(batch)
        device = batch.inputs.device
        labels = [torch.from_numpy(s.astype(np.int64)).to(device) for s in self.segments(batch)]
        counts = [int(s.max()) + 1 for s in labels]
        for sample, count in zip(batch.samples, counts, strict=True):
            if count < 2:
                raise ValueError(
                    f"{self.name}: SLIC found one segment in image {sample.image_id}; "
                    "raise n_segments or lower compactness"
                )
        width = max(counts)
        groups = torch.stack(
            [region_rank(c[None], s, width, "mean")[0] for c, s in zip(cams, labels, strict=True)]
        )
        # Images with fewer segments repeat their last step (full removal); the padding is dropped below.
        steps = torch.stack([torch.arange(1, width + 1).clamp_max(n) for n in counts])
        classes = batch.pred_classes[:, 0].to(device)
        scores = group_scores(
            model_of(batch),
            batch.inputs,
            classes,
            groups,
            steps,
            Baseline(self.baseline, batch, self.seed),
            self.score,
            self.chunk_size,
            cumulative=True,
            incremental=self.incremental,
        )
        clean = class_scores(batch.logits.to(device), classes, self.score).double()
        ratio = scores / clean[:, None].clamp_min(torch.finfo(torch.float64).tiny)
        ones = torch.ones(len(counts), 1, dtype=torch.float64, device=ratio.device)
        full = torch.cat([ones, ratio], 1)
        return [full[i, : n + 1] for i, n in enumerate(counts)], degenerate

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        curves, degenerate = self.curves(batch)
        aoc = torch.stack([1 - curve_auc(curve) for curve in curves])
        return {"aoc": aoc}, degenerate
