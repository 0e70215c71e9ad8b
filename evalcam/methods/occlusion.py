"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): the map at a pixel is the mean drop of the target
score over the occlusion windows covering it, each window filled with ``fill``.

Windows are ``patch_size`` px squares every ``stride`` px, plus a last row/column flush with the far border
so every pixel is covered (Captum's ``Occlusion`` leaves those pixels out when the stride does not divide the
free length; elsewhere the two agree). Maps are at input resolution, ``[B, K, H, W]``.

Each occluded copy differs from the clean image only inside its window. On the CPU (``incremental:
auto``, the default) it is scored by incremental re-inference (:mod:`evalcam.models.incremental`): only
the window's receptive-field cone is re-computed, exactly, on one intra-op thread: 2-3x less CPU than full
forwards per window on EfficientNet-Lite0 (one 224 px image, 45 px windows: 4.6-6.6 s against 13.6 s
CPU). On GPUs, for models ``torch.fx`` cannot trace, and with ``incremental=False``, whole copies run
through the model, ``chunk_size`` per call.
The same machinery produces the occlusion maps of the faithfulness metric.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from evalcam.methods.base import Explainer, Explanation, Targets, resolve_targets
from evalcam.models.chunked import chunked_forward, fast_layout
from evalcam.models.incremental import Box, incremental_model, spread, workers


def patch_origins(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` px, plus one flush with the far border."""
    patch = min(int(patch), length)
    starts = list(range(0, length - patch + 1, max(1, int(stride))))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def occlusion_boxes(size: tuple[int, int], patch: int, stride: int) -> list[Box]:
    """``(y0, y1, x0, x1)`` of every occlusion window, in raster order of their top-left corners."""
    height, width = size
    ph, pw = min(patch, height), min(patch, width)
    return [
        (y, y + ph, x, x + pw)
        for y in patch_origins(height, patch, stride)
        for x in patch_origins(width, patch, stride)
    ]


def occlusion_windows(boxes: list[Box], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Bool ``[P, H, W]``: one mask per box."""
    windows = torch.zeros(len(boxes), *size, dtype=torch.bool, device=device)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        windows[i, y0:y1, x0:x1] = True
    return windows


def spread_drops(drops: torch.Tensor, boxes: list[Box], size: tuple[int, int]) -> torch.Tensor:
    """``[..., P]`` per-window drops -> ``[..., H, W]``: the mean over the windows covering each pixel."""
    weights = occlusion_windows(boxes, size, drops.device).to(drops.dtype)
    return torch.einsum("...p,phw->...hw", drops, weights) / weights.sum(0).clamp_min(1)


#: ``incremental: auto`` re-infers incrementally on a CPU running at most this many intra-op threads.
#: Measured on EfficientNet-Lite0 (4-8 images), wall seconds: on one thread the incremental path takes
#: 2.2-2.8x less time than full forwards of the same copies (occlusion faithfulness 14.0 vs 31.1 s,
#: infidelity 14.1 vs 39.4 s, region perturbation 2.7 vs 6.7 s); on two threads, with its image groups on
#: two workers (:func:`evalcam.models.incremental.spread`), 5.7 vs 20.2 s, 7.1 vs 22.9 s, 1.7 vs 3.9 s.
#: How far the workers scale beyond two threads (the GIL, memory bandwidth) is not measured on this 2-core
#: host, while full batched forwards are known to use many cores: above this, full forwards.
AUTO_MAX_THREADS = 2


def use_incremental(setting: bool | str, device: torch.device) -> bool:
    """``"auto"``: incremental on a CPU running at most :data:`AUTO_MAX_THREADS` intra-op threads, where it
    is measured faster than full forwards; full batched forwards on more threads (not measured for the
    incremental path) and on accelerators, whose parallel kernels keep the device busy."""
    if isinstance(setting, str):
        if setting != "auto":
            raise ValueError(f"incremental must be true, false or 'auto', got {setting!r}")
        return device.type == "cpu" and torch.get_num_threads() <= AUTO_MAX_THREADS
    return bool(setting)


@torch.no_grad()
def occluded_outputs(
    model: nn.Module,
    inputs: torch.Tensor,
    boxes: list[Box],
    fill: torch.Tensor,
    chunk_size: int = 64,
    incremental: bool | str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs on ``inputs`` ``[B, ...]`` (clean) and on each occluded copy ``[B, P, ...]``,
    window ``p`` of ``boxes`` set to ``fill`` (broadcast to ``[1, C, 1, 1]``)."""
    executor = incremental_model(model) if use_incremental(incremental, inputs.device) else None
    if executor is None:
        return _dense_outputs(model, inputs, boxes, fill, chunk_size)
    # The groups of images run on the threads torch was given, one Python worker each (incremental.spread).
    # The clean pass is cached node by node for a group of images: the groups held at once are bounded
    # like a chunk of copies, however many workers hold them.
    count = workers(inputs.device, len(inputs))
    group = max(1, min(int(chunk_size) // 4 // count, math.ceil(len(inputs) / count)))
    # channels-last on the CPU: the windows' crops inherit it (~17 % faster on Lite0's infidelity squares)
    laid_out = fast_layout(model, inputs)

    def outputs_of(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        cache = executor.clean_pass(laid_out[start : start + group])
        occluded = torch.stack([executor.occluded(cache, box, fill) for box in boxes], dim=1)
        return executor.output_of(cache), occluded

    parts = spread(outputs_of, range(0, inputs.shape[0], group), inputs.device)
    return torch.cat([clean for clean, _ in parts]), torch.cat([occluded for _, occluded in parts])


def _dense_outputs(
    model: nn.Module, inputs: torch.Tensor, boxes: list[Box], fill: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    count = len(boxes)
    windows = occlusion_windows(boxes, (int(inputs.shape[-2]), int(inputs.shape[-1])), inputs.device)

    def occluded_copies(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=inputs.device)
        image, window = index // count, index % count
        return torch.where(windows[window][:, None], fill, inputs[image])

    clean = model(inputs)
    total = inputs.shape[0] * count
    occluded = torch.cat([out for _, out in chunked_forward(model, total, occluded_copies, chunk_size)])
    return clean, occluded.view(inputs.shape[0], count, *occluded.shape[1:])


class Occlusion(Explainer):
    """Occlusion sensitivity maps ``[B, K, H, W]`` of the target scores (see the module docstring).

    ``fill`` is in the network's input space: 0 is the dataset's mean colour for normalized inputs.
    One set of occluded passes serves every target of an image (``TopK(5)`` costs what ``TopK(1)`` costs).
    """

    name = "occlusion"

    def __init__(
        self,
        model: nn.Module,
        patch_size: int = 45,
        stride: int = 15,
        fill: float = 0.0,
        chunk_size: int = 64,
        incremental: bool | str = "auto",
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, autocast=autocast)
        if int(patch_size) < 1 or int(stride) < 1:
            raise ValueError(
                f"occlusion needs patch_size >= 1 and stride >= 1, got {patch_size} and {stride}"
            )
        self.patch_size, self.stride, self.fill = int(patch_size), int(stride), float(fill)
        use_incremental(incremental, torch.device("cpu"))  # reject a bad value now, not mid-run
        self.chunk_size, self.incremental = int(chunk_size), incremental

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        x = images.to(self.device)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        boxes = occlusion_boxes(size, self.patch_size, self.stride)
        fill = torch.full((1, x.shape[1], 1, 1), self.fill, dtype=x.dtype, device=x.device)
        with self._autocast():
            clean, occluded = occluded_outputs(self.model, x, boxes, fill, self.chunk_size, self.incremental)
        clean, occluded = clean.float(), occluded.float()
        classes, score_fns = resolve_targets(targets, clean)
        drops = torch.stack(
            [
                fn(clean)[:, None] - torch.stack([fn(occluded[:, p]) for p in range(len(boxes))], dim=1)
                for fn in score_fns
            ],
            dim=1,
        )
        return Explanation(maps=spread_drops(drops, boxes, size), logits=clean, classes=classes)
