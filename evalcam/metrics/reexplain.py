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
from evalcam.methods.base import Explainer, capture_activations

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
    size: tuple[int, int] | None,
    capture: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Explain items ``0 .. count-1`` a chunk at a time.

    Yields ``(items, inputs [n, C, H, W], maps [n, H, W] float64 at ``size``, logits [n, classes],
    captured)``; ``size`` None keeps the maps as the method returned them (decide flatness there:
    resampling a constant map leaves float ripples, :mod:`evalcam.metrics.stats`). ``captured`` is the
    output of layer ``capture`` from the explainer's own forward pass, so a metric that needs it saves a
    forward; it is None (the caller runs its own pass) unless the explainer ran exactly one
    full-precision forward of exactly these inputs (a CAM; not Score-CAM or RISE, whose later passes see
    masked inputs).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    model = explainer.model
    for start in range(0, count, chunk_size):
        items = torch.arange(start, min(start + chunk_size, count))
        inputs = inputs_of(items)
        classes = classes_of(items).to(inputs.device)
        if capture is None or explainer.autocast is not None:
            explanation, captured = explainer.explain(inputs, classes), None
        else:
            explanation, captured = _explain_capturing(explainer, model, inputs, classes, capture)
        maps = explanation.maps[:, 0].detach()
        maps = (maps if size is None else upsample(maps, size)).double()
        yield items, inputs, maps, explanation.logits.detach().float(), captured


def _explain_capturing(explainer: Explainer, model: nn.Module, inputs: torch.Tensor, classes, layer: str):
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with capture_activations(model, [layer]) as store:
            explanation = explainer.explain(inputs, classes)
    finally:
        handle.remove()
    single = len(seen) == 1 and seen[0].shape == inputs.shape and torch.equal(seen[0].detach(), inputs)
    captured = store.activations.get(layer) if single else None
    return explanation, None if captured is None else captured.detach().flatten(1).double()
