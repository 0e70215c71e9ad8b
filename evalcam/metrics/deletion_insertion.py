"""Deletion and insertion (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018; protocol of the authors' ``evaluation.py`` ``CausalMetric``).

For the top-1 predicted class ``c`` of each image, the method's map is upsampled bilinearly to the network
input and pixels are ordered by decreasing saliency. Starting from ``start``, ``step`` pixels (all
channels) at a time are replaced by the corresponding pixels of ``finish``, for ``n = ceil(H*W / step)``
steps; the class probability is read before the first and after every step (``n + 1`` points):

- **deletion**: ``start`` = the image, ``finish`` = the substrate (RISE: ``torch.zeros_like`` of the
  normalized input, i.e. the mean colour; ``"black"`` is also available); lower AUC is better;
- **insertion**: ``start`` = a blurred copy (RISE: Gaussian kernel 11 x 11, sigma 5, built by
  ``scipy.ndimage.gaussian_filter`` of a delta, applied per channel with zero padding), ``finish`` = the
  image; higher AUC is better.

AUC is the trapezoid rule on the uniform grid ``x = i / n`` (RISE's ``auc``:
``(sum - first/2 - last/2) / n``). Defaults follow RISE (``step`` = 224, probabilities); ``score="logit"``
is available. Ties in saliency are broken by raster order (RISE's unstable argsort leaves them arbitrary),
so results are deterministic. Degenerate maps (NaN/Inf or constant) carry no order: they are treated as
constant (pure raster order) and counted in ``degenerate_maps``.

Forwards: the clean point is the batch's own forward (``batch.logits``); the fully replaced point is one
forward per image (blur) or one per batch (a constant substrate is the same image for every image), and a
run with both games scores it, the saliency order and the substrate once per batch (deletion's end is
insertion's start when their substrates agree). The ``n - 1`` intermediate copies of all images of a batch
are generated on the fly and scored as one stream of ``chunk_size`` forwards; with ``incremental`` (on the
CPU by default) an image's steps that add a small region step from the previous copy by incremental
re-inference (:mod:`evalcam.metrics.local_steps`), the same numbers up to float round-off. Per batch of
``B`` images that is at most ``B (n - 1) + 1`` forwards for deletion with the RISE substrate instead of
``B (n + 1)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from evalcam.maps import upsample
from evalcam.methods.occlusion import use_incremental
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.local_steps import stepped_scores
from evalcam.metrics.perturbed_scores import class_scores, fill_value, model_of, normalization
from evalcam.metrics.stats import flat_maps


def curve_auc(scores: torch.Tensor) -> torch.Tensor:
    """RISE's normalized AUC of curves ``[..., n + 1]`` sampled at ``x = 0, 1/n, ..., 1``."""
    n = scores.shape[-1] - 1
    if n < 1:
        raise ValueError("a deletion/insertion curve needs at least two points")
    return (scores.sum(-1) - scores[..., 0] / 2 - scores[..., -1] / 2) / n


def gaussian_kernel(size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's ``gkern``: ``gaussian_filter`` of a centred delta (so the tails fold back in, 'reflect')."""
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1
    return torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32))


def blur(inputs: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Per-channel Gaussian blur of ``[B, C, H, W]`` with zero padding (RISE's insertion substrate)."""
    channels = inputs.shape[1]
    kernel = gaussian_kernel(size, sigma).to(inputs.device, inputs.dtype)
    weight = kernel.expand(channels, 1, size, size).contiguous()
    return F.conv2d(inputs, weight, padding=size // 2, groups=channels)


def shared_state(batch: EvalBatch) -> dict[Any, Any]:
    """What deletion and insertion share on one batch (saliency order, substrates, fully replaced scores),
    kept in ``batch.extra`` and tied to the batch's input tensor (a sliced batch gets its own)."""
    entry = batch.extra.get("causal")
    if entry is None or entry[0] is not batch.inputs:
        entry = (batch.inputs, {})
        batch.extra["causal"] = entry
    return entry[1]


def saliency_rank(
    cams: torch.Tensor, degenerate: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of every pixel in decreasing-saliency order ``[B, H*W]`` (0 = most salient), and a
    ``[B]`` flag of degenerate maps (ranked by raster order); ``degenerate`` adds flags found before the
    maps were resampled."""
    flat = cams.flatten(1).double()
    found = ~torch.isfinite(flat).all(1) | ~(flat.amax(1) > flat.amin(1))
    degenerate = found if degenerate is None else found | degenerate.to(found.device)
    flat = torch.where(degenerate[:, None], torch.zeros_like(flat), flat)
    order = torch.argsort(-flat, dim=1, stable=True)
    rank = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    rank.scatter_(1, order, positions)
    return rank, degenerate


class CausalMetric(Metric):
    """Deletion or insertion game; the registered metrics are :class:`Deletion` and :class:`Insertion`."""

    pred_topk = 1
    mode = "deletion"

    def __init__(
        self,
        device: torch.device | str = "cpu",
        step: int = 224,
        substrate: str | float | None = None,
        blur_size: int = 11,
        blur_sigma: float = 5.0,
        score: str = "prob",
        chunk_size: int = 64,
        incremental: bool | str = "auto",
    ) -> None:
        super().__init__(device)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.incremental = incremental
        self.step = int(step)
        if self.step < 1:
            raise ValueError(f"step must be >= 1 pixel; got {step}")
        self.substrate = (
            substrate if substrate is not None else ("zero" if self.mode == "deletion" else "blur")
        )
        self.blur_size, self.blur_sigma = int(blur_size), float(blur_sigma)
        self.score, self.chunk_size = score, int(chunk_size)
        for state in ("auc_sum", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def substrate_of(self, batch: EvalBatch) -> torch.Tensor:
        if self.substrate == "blur":
            return blur(batch.inputs, self.blur_size, self.blur_sigma)
        mean, std = normalization(batch)
        return fill_value(self.substrate, mean, std).expand_as(batch.inputs)

    def _substrate_key(self) -> tuple[Any, ...]:
        return ("blur", self.blur_size, self.blur_sigma) if self.substrate == "blur" else (self.substrate,)

    @torch.no_grad()
    def _substrate_logits(
        self, batch: EvalBatch, shared: dict[Any, Any], substrate: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, classes]`` of the fully replaced images (deletion's last point, insertion's first)."""
        key = ("logits", *self._substrate_key())
        if key not in shared:
            model = model_of(batch)
            if self.substrate == "blur":
                parts = [
                    model(substrate[i : i + self.chunk_size])
                    for i in range(0, len(substrate), self.chunk_size)
                ]
                shared[key] = torch.cat(parts)
            else:
                # A constant substrate is the same image for every image of the batch: one forward.
                shared[key] = model(substrate[:1]).expand(len(substrate), -1)
        return shared[key]

    def curves(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, n + 1]`` of the top-1 class along the game, and the degenerate-map flags.

        The clean point is the batch's own forward and the fully replaced point is scored once per image
        (blur) or once per batch (a constant substrate), shared with the other game of the pair through
        :func:`shared_state`, as are the saliency order and the substrate; the ``n - 1`` intermediate
        copies of all images run as one stream (small replaced regions incrementally, see
        :mod:`evalcam.metrics.local_steps`).
        """
        inputs = batch.inputs
        height, width = (int(v) for v in inputs.shape[-2:])
        shared = shared_state(batch)
        key = ("substrate", *self._substrate_key())
        if key not in shared:
            shared[key] = self.substrate_of(batch)
        substrate = shared[key]
        start, finish = (inputs, substrate) if self.mode == "deletion" else (substrate, inputs)
        if "rank" not in shared:
            cams = upsample(batch.pred_maps[:, 0].to(inputs.device), (height, width))
            shared["rank"] = saliency_rank(cams, flat_maps(batch.pred_maps[:, 0]))
        rank, degenerate = shared["rank"]
        rank = rank.view(-1, 1, height, width)
        steps = math.ceil(height * width / self.step)
        classes = batch.pred_classes[:, 0].to(inputs.device)

        def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return rank[image] < ((k + 1) * self.step).view(-1, 1, 1, 1)  # copy k is step k + 1

        middle = stepped_scores(
            model_of(batch),
            start,
            classes,
            steps - 1,
            mask_of,
            lambda image, _k: finish[image],
            self.score,
            self.chunk_size,
            self.incremental,
            nested=True,  # copy k replaces the first (k + 1) * step pixels of the order: nested
        )
        clean = class_scores(batch.logits.to(inputs.device), classes, self.score).double()
        replaced = class_scores(
            self._substrate_logits(batch, shared, substrate), classes, self.score
        ).double()
        first, last = (clean, replaced) if self.mode == "deletion" else (replaced, clean)
        return torch.cat([first[:, None], middle.to(first.device), last[:, None]], 1), degenerate

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        scores, degenerate = self.curves(batch)
        auc = curve_auc(scores)
        self.auc_sum = self.auc_sum + auc.sum().to(self.device)
        self.images = self.images + len(auc)
        self.degenerate = self.degenerate + degenerate.sum().to(self.device)
        return [
            self.record(auc=float(a), score_start=float(s[0]), score_end=float(s[-1]))
            for a, s in zip(auc.tolist(), scores.tolist(), strict=True)
        ]

    def compute(self) -> dict[str, float]:
        return {
            "auc": safe_ratio(self.auc_sum, self.images),
            "images": float(self.images),
            "degenerate_maps": float(self.degenerate),
        }


class Deletion(CausalMetric):
    name = "deletion"
    mode = "deletion"
    higher_is_better: ClassVar[dict[str, bool]] = {"auc": False}


class Insertion(CausalMetric):
    name = "insertion"
    mode = "insertion"
    higher_is_better: ClassVar[dict[str, bool]] = {"auc": True}
