"""Shared machinery of the metrics that re-run the model on perturbed inputs.

Perturbed copies are generated lazily, a chunk at a time, and scored in batched forwards under
``torch.no_grad`` in full precision. Each copy's score depends only on its own image, so results do not
depend on how images were grouped into batches (up to float round-off of batched kernels).
"""

from __future__ import annotations

import torch
from torch import nn

from evalcam.metrics.base import EvalBatch
from evalcam.models.chunked import ItemInputs, chunked_forward


def model_of(batch: EvalBatch) -> nn.Module:
    if batch.bundle is not None:
        return batch.bundle.model
    return batch.explainer.model


def normalization(batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``mean, std`` ``[1, 3, 1, 1]`` of the bundle's preprocessing.

    Network inputs are ``(pixels - mean) / std`` with pixels in [0, 1].
    """
    pre = batch.bundle.preprocess
    device = batch.inputs.device
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def class_scores(logits: torch.Tensor, classes: torch.Tensor, score: str) -> torch.Tensor:
    """``[n]`` score of ``classes`` in ``logits``: the raw logit or the softmax probability."""
    logits = logits.float()
    if score == "prob":
        logits = logits.softmax(-1)
    elif score != "logit":
        raise ValueError(f"unknown score {score!r}; use 'prob' or 'logit'")
    return logits.gather(1, classes.view(-1, 1).to(logits.device)).squeeze(1)


@torch.no_grad()
def scores_of_items(
    model: nn.Module, count: int, inputs_of: ItemInputs, classes: torch.Tensor, score: str, chunk_size: int
) -> torch.Tensor:
    """Scores ``[count]`` of ``classes[i]`` on perturbed input ``i``, ``chunk_size`` inputs per forward."""
    out = [
        class_scores(logits, classes[items], score).double()
        for items, logits in chunked_forward(model, count, inputs_of, chunk_size)
    ]
    if not out:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(out)


def fill_value(kind: str | float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel value ``[1, 3, 1, 1]`` in input space for an occluded pixel.

    ``"mean"``/``"zero"``: 0 in the normalized input space, i.e. the dataset's mean colour (RISE's
    ``torch.zeros_like`` on normalized tensors); ``"black"``: pixel value 0; a number in [0, 1]: that grey
    level in pixel units.
    """
    if isinstance(kind, str) and kind in ("mean", "zero"):
        return torch.zeros_like(mean)
    if isinstance(kind, str) and kind == "black":
        return (0 - mean) / std
    try:
        level = float(kind)
    except (TypeError, ValueError) as err:
        raise ValueError(f"unknown fill {kind!r}; use 'mean', 'black' or a grey level in [0, 1]") from err
    return (level - mean) / std
