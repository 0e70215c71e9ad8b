"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019), with the paper's square-removal perturbations and optimal scaling.

For the top-1 predicted class ``c`` of each image, every ``patch_size`` x ``patch_size`` square of a
``stride`` grid (the last row/column flush with the border) is set to the constant ``baseline`` colour in
turn: ``I = x - x'`` is non-zero on that square only. For each square ``s`` the explanation's predicted
change ``e_s = sum_{pixels, channels} map * I`` (the upsampled map broadcast over channels) is compared with
the model's change ``d_s = f(x) - f(x')``. Infidelity is ``mean_s (beta e_s - d_s)^2`` (lower is better);
with ``scaled: true`` (the authors' code) ``beta = mean(e d) / mean(e^2)`` is the optimal scale, since
maps such as CAMs have no absolute unit; ``scaled: false`` uses ``beta = 1``. The squares are enumerated
rather than sampled (the expectation over a uniform choice of square). A map whose ``e`` is zero
everywhere scores ``mean d^2`` (``beta = 0``) and is counted in ``degenerate_maps``.

Each perturbation is local, so the square copies run through the incremental re-inference of
:mod:`evalcam.models.incremental` on the CPU (``incremental: auto``), as occlusion faithfulness does.
Quantus's ``Infidelity`` (0.6) perturbs its patches cumulatively (each copy keeps the previous patches
removed) and does not rescale; that is not the paper's protocol. Where each of its copies lacks one square
(a ``perturb_func`` starting from the clean image, or one patch covering the image) it equals ``scaled:
false``; ``tests/test_metrics_faithfulness_family_quantus.py`` checks that number for number, reproduces its
cumulative value explicitly and checks ``scaled: true`` against the paper's formula written out.

The model's changes ``d`` do not depend on the map: with ``cache_dir`` set they are kept on disk
(:mod:`evalcam.metrics.score_cache`) and the methods of a sweep over one model and dataset share them.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from evalcam.methods.occlusion import occluded_outputs, occlusion_boxes, occlusion_windows, use_incremental
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.perturbed_scores import class_scores, fill_value, model_of, normalization
from evalcam.metrics.score_cache import ScoreCache, cached_rows


class Infidelity(FaithfulMetric):
    name = "infidelity"
    keys: ClassVar[tuple[str, ...]] = ("infidelity",)
    higher_is_better: ClassVar[dict[str, bool]] = {"infidelity": False}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        patch_size: int = 16,
        stride: int = 16,
        baseline: str | float = "mean",
        scaled: bool = True,
        score: str = "logit",
        chunk_size: int = 64,
        incremental: bool | str = "auto",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(device)
        self.patch_size, self.stride = int(patch_size), int(stride)
        if self.patch_size < 1 or self.stride < 1:
            raise ValueError(f"{self.name}: patch_size and stride must be >= 1 pixel")
        if baseline in ("uniform", "blur", "image_mean"):
            raise ValueError(
                f"{self.name}: baseline={baseline!r} is not a constant colour; use mean, black, a grey level"
            )
        use_incremental(incremental, torch.device("cpu"))
        self.baseline, self.scaled, self.score = baseline, bool(scaled), score
        self.chunk_size, self.incremental = int(chunk_size), incremental
        self.cache = ScoreCache(cache_dir, self.name) if cache_dir else None

    def changes(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Explained changes ``e`` and model changes ``d`` ``[B, squares]``, and degenerate flags."""
        cams, degenerate = input_cams(batch)
        inputs = batch.inputs
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        if self.patch_size > min(size):
            raise ValueError(f"{self.name}: patch_size={self.patch_size} exceeds the input size {size}")
        mean, std = normalization(batch)
        fill = fill_value(self.baseline, mean, std)
        boxes = occlusion_boxes(size, self.patch_size, self.stride)
        classes = batch.pred_classes[:, 0].to(inputs.device)
        model, count = model_of(batch), len(boxes)

        def compute(index: torch.Tensor) -> torch.Tensor:
            clean, occluded = occluded_outputs(
                model, inputs[index], boxes, fill, self.chunk_size, self.incremental
            )
            chosen = classes[index]
            before = class_scores(clean, chosen, self.score).double()
            after = class_scores(occluded.flatten(0, 1), chosen.repeat_interleave(count), self.score)
            return before[:, None] - after.double().view(-1, count).to(before.device)

        settings = (self.patch_size, self.stride, self.score, fill.tolist())
        model_change = cached_rows(self.cache, batch, model, classes, settings, (count,), compute)
        windows = occlusion_windows(boxes, size, inputs.device).double()
        removed = (inputs - fill).double().sum(1)  # sum over channels of I inside a square
        explained = torch.einsum("bhw,phw->bp", cams * removed, windows)
        return explained, model_change, degenerate

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        explained, change, degenerate = self.changes(batch)
        power = (explained**2).mean(1)
        silent = ~(power > 0)
        beta = torch.ones_like(power)
        if self.scaled:
            beta = torch.where(silent, 0.0, (explained * change).mean(1) / power.clamp_min(1e-300))
        value = ((beta[:, None] * explained - change) ** 2).mean(1)
        return {"infidelity": value}, degenerate | silent.to(degenerate.device)
