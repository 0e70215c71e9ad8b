"""Shared machinery of the metrics that re-explain perturbed copies of the images (robustness family) or
explain with a changed model or target (randomization family).

- :func:`require_eval`: a model in training mode changes with every pass (batch-norm statistics,
  dropout), so nothing re-explained on it can be compared with the clean map; refused with one line.
- :func:`copy_noise`: the noise of copy ``s`` of an image is drawn from a CPU generator seeded with
  ``(seed, image_id, s)``: the same noise for an image in any batch, chunk size, resume or device, and no
  global RNG state is touched.
- :func:`reexplain`: explains ``count`` perturbed copies in chunks of ``chunk_size`` images per call of
  ``batch.explainer`` (one forward and one backward per chunk for gradient CAMs), and yields the maps
  bilinearly resized to the input resolution (where Quantus and the papers compare attributions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from evalcam.maps import upsample
from evalcam.methods.base import Explainer

NOISES = ("uniform", "gaussian")


def require_eval(model: nn.Module, metric: str) -> None:
    """One-line refusal of a model that is not in eval mode (any submodule training)."""
    if any(module.training for module in model.modules()):
        raise ValueError(
            f"{metric}: the model is in training mode (batch norm / dropout change with every pass, so "
            f"re-explained maps are not comparable); call model.eval() first"
        )


def copy_seed(seed: int, image_id: str, copy_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{image_id}:{copy_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def copy_noise(
    image_ids: Sequence[str],
    copies: Sequence[int],
    shape: Sequence[int],
    kind: str,
    scale: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[n, *shape]`` noise, row ``i`` for copy ``copies[i]`` of image ``image_ids[i]``.

    ``uniform``: U(-scale, scale) per element (the L-inf ball of Yeh et al. 2019);
    ``gaussian``: N(0, scale^2).
    """
    if kind not in NOISES:
        raise ValueError(f"unknown noise {kind!r}; use one of: {', '.join(NOISES)}")
    rows = []
    for image_id, index in zip(image_ids, copies, strict=True):
        gen = torch.Generator().manual_seed(copy_seed(seed, image_id, int(index)))
        if kind == "uniform":
            rows.append(torch.empty(tuple(shape)).uniform_(-scale, scale, generator=gen))
        else:
            rows.append(torch.randn(tuple(shape), generator=gen) * scale)
    return torch.stack(rows).to(device)


def reexplain(
    explainer: Explainer,
    count: int,
    inputs_of: Callable[[torch.Tensor], torch.Tensor],
    classes_of: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int,
    size: tuple[int, int],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Explain items ``0 .. count-1`` a chunk at a time.

    Yields ``(items, inputs [n, C, H, W], maps [n, H, W] float64 at ``size``, logits [n, classes])``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, count, chunk_size):
        items = torch.arange(start, min(start + chunk_size, count))
        inputs = inputs_of(items)
        explanation = explainer.explain(inputs, classes_of(items).to(inputs.device))
        maps = upsample(explanation.maps[:, 0].detach(), size).double()
        yield items, inputs, maps, explanation.logits.detach().float()
