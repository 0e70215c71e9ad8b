"""The one perturbation/imputation helper of the faithfulness family (pixel flipping, region perturbation,
IROF, ROAD, faithfulness correlation/estimate, monotonicity correlation, infidelity).

Every metric of the family asks the same question: the score of the image's class after a set of pixels
was replaced. Here that is expressed once:

* a **grouping** assigns every pixel of ``[B, H, W]`` the position of its group in the metric's order
  (:func:`pixel_groups` for single pixels by saliency, :func:`patch_groups` for square patches ranked by
  summed saliency, :func:`segment_groups` for superpixels ranked by mean saliency);
* a **baseline** (:class:`Baseline`) gives the replacement values of a perturbed copy: the dataset's mean
  colour, black, a grey level, the image's own mean, a blurred copy, uniform noise in pixel space, or
  ROAD's noisy linear imputation (:mod:`evalcam.metrics.road`);
* :func:`group_scores` scores ``K`` perturbed copies of each image (cumulative ``group < k`` or a single
  group ``group == k``) with the steps of all images of a batch in one stream of chunked forwards under
  ``torch.no_grad`` (:func:`evalcam.metrics.perturbed_scores.scores_of_items`), so memory stays bounded by
  ``chunk_size`` copies whatever the number of steps.

Random baselines draw from a generator seeded by ``(seed, image key, copy index)``, so a copy's noise does
not depend on batching or chunking.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.deletion_insertion import blur
from evalcam.metrics.local_steps import stepped_scores
from evalcam.metrics.perturbed_scores import fill_value, normalization, scores_of_items

#: baselines a config may name (a number in [0, 1] is a grey level)
BASELINES = ("mean", "zero", "black", "image_mean", "blur", "uniform")


def require_eval(model: nn.Module, metric: str) -> None:
    """Refuse a model in training mode: dropout and batch norm would make every perturbed score noisy."""
    if any(module.training for module in model.modules()):
        raise ValueError(f"{metric}: the model is in training mode; call model.eval() before evaluating")


def check_count(metric: str, key: str, value: int, limit: int, what: str = "pixels") -> int:
    """A step/group count in ``1 .. limit``, or a one-line error naming the config key."""
    value = int(value)
    if value < 1 or value > limit:
        raise ValueError(
            f"{metric}: {key}={value} must be between 1 and the number of {what} ({limit}); lower {key}"
        )
    return value


def image_seed(seed: int, key: str) -> int:
    """A per-image seed from the run's seed and the image's id (independent of batching)."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1)


def image_keys(batch: EvalBatch) -> list[str]:
    return [str(sample.image_id) for sample in batch.samples]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Baseline:
    """Replacement values ``[n, C, H, W]`` (network input space) for perturbed copies of a batch.

    ``uniform`` noise is drawn once per image, or once per copy with ``per_copy`` (several noise draws of
    one perturbation, as monotonicity correlation needs)."""

    def __init__(
        self,
        kind: str | float,
        batch: EvalBatch,
        seed: int = 0,
        blur_size: int = 11,
        blur_sigma: float = 5.0,
        per_copy: bool = False,
    ) -> None:
        if isinstance(kind, str) and kind not in BASELINES and not _is_number(kind):
            raise ValueError(
                f"unknown baseline {kind!r}; use one of {', '.join(BASELINES)} or a grey level in [0, 1]"
            )
        inputs = batch.inputs
        self.kind, self.inputs = kind, inputs
        self.mean, self.std = normalization(batch)
        self.seeds = [image_seed(seed, key) for key in image_keys(batch)]
        self.fixed: torch.Tensor | None = None
        if kind == "uniform":
            if not per_copy:
                # One noise image per image: a region once replaced keeps its values as more are added.
                index = torch.arange(len(inputs), device=inputs.device)
                self.fixed = self._noise(index, torch.zeros_like(index))
            return
        if kind == "blur":
            self.fixed = blur(inputs, int(blur_size), float(blur_sigma))
        elif kind == "image_mean":
            self.fixed = inputs.mean(dim=(1, 2, 3), keepdim=True).expand_as(inputs)
        else:
            self.fixed = fill_value(kind, self.mean, self.std).expand_as(inputs)

    def __call__(self, image: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        """Replacement of copy ``copy[i]`` of image ``image[i]``."""
        if self.fixed is not None:
            return self.fixed[image]
        return self._noise(image, copy)

    def _noise(self, image: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        shape = self.inputs.shape[1:]
        out = torch.empty(len(image), *shape, dtype=self.inputs.dtype, device=self.inputs.device)
        for row, (i, k) in enumerate(zip(image.tolist(), copy.tolist(), strict=True)):
            generator = torch.Generator().manual_seed(self.seeds[i] + 7919 * int(k))
            out[row] = torch.rand(shape, generator=generator).to(out.device)
        # Uniform noise in pixel units [0, 1] (Samek et al.), mapped to the network's input space.
        return (out - self.mean) / self.std


def _rank(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Position ``[B, n]`` of every entry in the order (ties broken by index, so results are stable)."""
    values = torch.nan_to_num(values.double(), nan=0.0, posinf=0.0, neginf=0.0)
    order = torch.argsort(-values if descending else values, dim=1, stable=True)
    rank = torch.empty_like(order)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    return rank.scatter_(1, order, positions)


def pixel_groups(cams: torch.Tensor, groups: int, descending: bool = True) -> torch.Tensor:
    """``[B, H, W]`` group of each pixel: pixels by saliency rank, cut into ``groups`` runs of
    ``H*W/groups`` pixels (sizes differ by at most one)."""
    count = cams.shape[-2] * cams.shape[-1]
    rank = _rank(cams.flatten(1), descending)
    return (rank * groups // count).view(cams.shape)


def patch_cells(size: tuple[int, int], patch: int, device: torch.device) -> torch.Tensor:
    """``[H, W]`` index of the ``patch`` x ``patch`` grid cell of each pixel (raster order; the last
    row/column of cells is smaller when ``patch`` does not divide the size)."""
    height, width = size
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    return rows[:, None] * (-(-width // patch)) + cols[None, :]


def region_rank(
    cams: torch.Tensor, labels: torch.Tensor, regions: int, reduce: str, descending: bool = True
) -> torch.Tensor:
    """``[B, H, W]`` position of each pixel's region (``labels`` ``[B, H, W]`` or ``[H, W]`` in
    ``0..regions-1``) when regions are ordered by their ``reduce`` (``sum``/``mean``) saliency."""
    batch = cams.shape[0]
    labels = labels.expand(batch, -1, -1) if labels.dim() == 2 else labels
    flat_labels = labels.flatten(1)
    values = torch.nan_to_num(cams.flatten(1).double(), nan=0.0, posinf=0.0, neginf=0.0)
    sums = torch.zeros(batch, regions, dtype=torch.float64, device=cams.device)
    sums.scatter_add_(1, flat_labels, values)
    if reduce == "mean":
        sizes = torch.zeros_like(sums).scatter_add_(1, flat_labels, torch.ones_like(values))
        sums = sums / sizes.clamp_min(1)
    rank = _rank(sums, descending)
    return rank.gather(1, flat_labels).view(labels.shape)


def patch_groups(cams: torch.Tensor, patch: int, descending: bool = True) -> tuple[torch.Tensor, int]:
    """Patches of ``patch`` px ranked by summed saliency (Samek et al.): ``([B, H, W] ranks, count)``."""
    cells = patch_cells((int(cams.shape[-2]), int(cams.shape[-1])), patch, cams.device)
    count = int(cells.max()) + 1
    return region_rank(cams, cells, count, "sum", descending), count


def slic_segments(pixels: torch.Tensor, **slic_kwargs: object) -> list[np.ndarray]:
    """SLIC superpixels (scikit-image, ``start_label=0``) of images ``[B, C, H, W]`` in pixel units."""
    from skimage.segmentation import slic

    out = []
    for image in pixels.detach().double().cpu().numpy():
        out.append(np.asarray(slic(np.moveaxis(image, 0, -1), start_label=0, **slic_kwargs)))
    return out


#: bool masks ``[n, 1, H, W]`` (True: replaced) of copies ``copy[i]`` of images ``image[i]``
MaskOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def masked_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    copies: int,
    mask_of: MaskOf,
    baseline: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    score: str,
    chunk_size: int,
) -> torch.Tensor:
    """Scores ``[B, copies]`` of ``classes`` on ``copies`` perturbed copies of each image: ``mask_of``'s
    pixels take the baseline. The copies of all images are one stream of ``chunk_size`` forwards."""
    batch = inputs.shape[0]

    def inputs_of(lo: int, hi: int) -> torch.Tensor:
        index = torch.arange(lo, hi, device=inputs.device)
        image, k = index // copies, index % copies
        return torch.where(mask_of(image, k), baseline(image, k), inputs[image])

    item_classes = classes.to(inputs.device).repeat_interleave(copies)
    scores = scores_of_items(model, batch * copies, inputs_of, item_classes, score, chunk_size)
    return scores.view(batch, copies)


def group_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    groups: torch.Tensor,
    steps: torch.Tensor,
    baseline: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    score: str,
    chunk_size: int,
    cumulative: bool,
    incremental: bool | str = False,
) -> torch.Tensor:
    """Scores ``[B, K]`` of ``classes`` on copies of ``inputs`` where the pixels of ``groups`` ``[B, H, W]``
    equal to ``steps[k]`` (or, ``cumulative``, below ``steps[k]``) take the baseline.

    ``steps`` is ``[K]`` (shared) or ``[B, K]`` (per image). ``incremental`` (``True``/``"auto"``: on the
    CPU) scores copies that replace a small region by incremental re-inference
    (:mod:`evalcam.metrics.local_steps`): the same numbers, fewer forwards.
    """
    batch = inputs.shape[0]
    steps = steps.to(inputs.device)
    steps = steps.expand(batch, -1) if steps.dim() == 1 else steps
    groups = groups.to(inputs.device).unsqueeze(1)

    def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        bound = steps[image, k].view(-1, 1, 1, 1)
        return groups[image] < bound if cumulative else groups[image] == bound

    if incremental is not False:
        # Cumulative copies with fixed replacement values are nested: each can step from the one before.
        nested = (
            cumulative
            and getattr(baseline, "fixed", None) is not None
            and bool((steps.diff(dim=1) >= 0).all())
        )
        return stepped_scores(
            model,
            inputs,
            classes,
            steps.shape[1],
            mask_of,
            baseline,
            score,
            chunk_size,
            incremental,
            nested=nested,
        )
    return masked_scores(model, inputs, classes, steps.shape[1], mask_of, baseline, score, chunk_size)


def trapezoid(curve: torch.Tensor, dx: float = 1.0) -> torch.Tensor:
    """Trapezoid rule along the last axis (``np.trapezoid`` with spacing ``dx``)."""
    if curve.shape[-1] < 2:
        return torch.zeros(curve.shape[:-1], dtype=curve.dtype, device=curve.device)
    return dx * (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2)
