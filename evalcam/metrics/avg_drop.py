"""Average Drop % and % Increase in Confidence (Chattopadhyay et al., "Grad-CAM++", WACV 2018, Sec. 5.1).

For the top-1 predicted class ``c`` of each image, the explanation map is the image masked by the method's
map, ``E = I ⊙ L`` with ``L`` upsampled bilinearly to the input and min-max normalized to [0, 1]. With
``Y`` the model's softmax confidence for ``c`` on the image and ``O`` on ``E``:

- ``avg_drop`` = mean over images of ``max(0, Y - O) / Y`` (lower is better);
- ``increase_conf`` = fraction of images with ``O > Y`` (higher is better).

Both are logged as fractions in [0, 1], like every evalcam metric; the paper's percentages are these
x 100 (``experiments/avg_drop.yaml`` shows them with ``scale: 100``).

Both come from the same forwards, so one metric reports both.

Which space ``I`` lives in changes the numbers (masked-out pixels become black, or the dataset's mean
colour), so it is a setting, ``space``, and the default is the paper's:

- ``space="pixel"`` (default): the product is taken on the image in pixel space and the result is
  normalized like any input. This is the Grad-CAM++ paper's: Sec. 5.1 defines ``E^c = L^c ∘ I`` with ``I``
  the image, and the authors' released pipeline (adityac94/Grad_CAM_plus_plus, ``misc/utils.py``) feeds
  its VGG-16 (the tensorflow-vgg ``Vgg16.build(rgb)`` API: RGB in [0, 1], the mean subtracted inside the
  graph) the image itself, so ``L ∘ I`` there is a product in pixel space. Their evaluation script was not
  released.
- ``space="normalized"``: multiplies the normalized network input (masked-out pixels become the mean
  colour), what pytorch-grad-cam does (``input_tensor * cam`` in its confidence-change metrics); use it to
  compare with numbers made with that library (identical to 3e-8 on the same maps).

A degenerate map (NaN/Inf or constant) keeps nothing: ``L = 0``; it is counted in ``degenerate_maps``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from evalcam.maps import normalize, upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.perturbed_scores import model_of, normalization, scores_of_items
from evalcam.metrics.stats import flat_maps
from evalcam.stats.aggregation import Aggregation, Mean


def masked_inputs(
    inputs: torch.Tensor, cams: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, space: str = "pixel"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``E = I ⊙ L`` as network inputs, with ``L`` = min-max normalized ``cams`` at input size; and the
    ``[B]`` flags of degenerate maps (replaced by zeros)."""
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    degenerate = flat_maps(cams.to(inputs.device))  # judged before resampling (see metrics.stats)
    cams = upsample(cams.to(inputs.device), size)
    flat = cams.flatten(1)
    degenerate = degenerate | ~torch.isfinite(flat).all(1) | ~(flat.amax(1) > flat.amin(1))
    weights = torch.where(degenerate.view(-1, 1, 1), torch.zeros_like(cams), normalize(cams)).unsqueeze(1)
    if space == "pixel":
        return ((inputs * std + mean) * weights - mean) / std, degenerate
    if space == "normalized":
        return inputs * weights, degenerate
    raise ValueError(f"unknown space {space!r}; use 'pixel' or 'normalized'")


class AverageDrop(Metric):
    name = "avg_drop"
    pred_topk = 1
    higher_is_better: ClassVar[dict[str, bool]] = {"avg_drop": False, "increase_conf": True}

    def __init__(
        self, device: torch.device | str = "cpu", space: str = "pixel", chunk_size: int = 64
    ) -> None:
        super().__init__(device)
        self.space, self.chunk_size = space, int(chunk_size)
        for state in ("drop_sum", "increase", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        inputs = batch.inputs
        mean, std = normalization(batch)
        explained, degenerate = masked_inputs(inputs, batch.pred_maps[:, 0], mean, std, self.space)
        classes = batch.pred_classes[:, 0].to(inputs.device)
        both = torch.cat([inputs, explained])
        scores = scores_of_items(
            model_of(batch), len(both), lambda a, b: both[a:b], classes.repeat(2), "prob", self.chunk_size
        )
        y, o = scores.view(2, -1)
        # A softmax output is never exactly 0 in float32 for a top-1 class; the guard only avoids 0/0.
        drop = (y - o).clamp_min(0) / y.clamp_min(torch.finfo(torch.float64).tiny)
        increase = o > y
        self.drop_sum = self.drop_sum + drop.sum().to(self.device)
        self.increase = self.increase + increase.sum().to(self.device)
        self.images = self.images + len(y)
        self.degenerate = self.degenerate + degenerate.sum().to(self.device)
        return [
            self.record(
                y=float(a),
                o=float(b),
                drop=float(d),
                increase=bool(i),
            )
            for a, b, d, i in zip(y.tolist(), o.tolist(), drop.tolist(), increase.tolist(), strict=True)
        ]

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # Both are logged as fractions (reports scale them by 100): means of the per-image drop ratio and
        # increase flag.
        known = {"avg_drop": Mean(self.column("drop")), "increase_conf": Mean(self.column("increase"))}
        return {k: known[k] for k in keys if k in known}

    def compute(self) -> dict[str, float]:
        return {
            "avg_drop": safe_ratio(self.drop_sum, self.images),
            "increase_conf": safe_ratio(self.increase, self.images),
            "images": float(self.images),
            "degenerate_maps": float(self.degenerate),
        }
