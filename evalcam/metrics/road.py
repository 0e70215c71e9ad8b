"""ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022), without retraining; protocol of the authors'
``road`` package (github.com/tleemann/road_evaluation: ``ImputedDataset``, ``NoisyLinearImputer``,
``road_eval``).

For the top-1 predicted class ``c`` of each image and every percentage ``p`` of ``percentages``:

1. pixels are ordered by decreasing saliency of the map upsampled to the input (ties by raster order; the
   reference breaks ties with ``1e-4`` Gaussian noise on the min-max normalized map instead);
2. **MoRF** removes the first ``int(H*W*p/100)`` pixels of the order, **LeRF** the rest of the order after
   them (the reference's ``salient_order[int(wh*p):]``: LeRF at ``p`` keeps the ``p`` most salient);
3. removed pixels are filled by **noisy linear imputation** in pixel units [0, 1]: each removed pixel equals
   the weighted mean of its in-image 8 neighbours (weights 1/6 for the 4 direct, 1/12 for the 4 diagonal
   ones), one sparse linear system per image and channel set, solved exactly, plus ``noise`` x N(0, 1)
   (default 0.01) drawn from a generator seeded per image, order and percentage;
4. the imputed image is normalized and scored: ``acc`` (is ``c`` still the top-1 class) and ``prob``
   (softmax probability of ``c``).

Logged per image, each a mean over the percentages: ``morf_acc``, ``morf_prob`` (lower is better),
``lerf_acc``, ``lerf_prob`` (higher is better). The imputation is a CPU sparse solve (scipy), as in the
reference; forwards run chunked on the metric's device. Quantus's ``ROAD`` imputes in the network's input
space, only MoRF, accuracy only, with ``int(H*W*p/100)`` features of the channel-broadcast map; on
one-channel inputs and without noise it equals the MoRF hits here (imputation commutes with the affine
normalization); on colour inputs those feature indices are not pixel indices (with a one-channel map its
imputer fails, a three-channel map counts ``C*H*W`` features): both pinned in
``tests/test_metrics_faithfulness_family_quantus.py``.

A degenerate map (NaN/Inf, constant, or negative everywhere) is counted in ``degenerate_maps`` and still
scored: non-finite values count as 0 and ties fall back to raster order (see
:mod:`evalcam.metrics.faithful_base`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams
from evalcam.metrics.imputation import image_keys, image_seed, pixel_groups
from evalcam.metrics.perturbed_scores import model_of, normalization, scores_of_items

#: ``(dy, dx, weight)`` of the neighbours in the reference's ``neighbors_weights``
NEIGHBOURS = (
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)


@lru_cache(maxsize=16)
def dissection_order(height: int, width: int, leaf: int = 16) -> np.ndarray:
    """Flat indices of an ``height`` x ``width`` grid in geometric nested-dissection order.

    Boxes are cut in half across their longer side by a one-pixel line (a separator for the 8-neighbour
    stencil), both halves come first (recursively) and the line last. Restricted to any set of pixels it
    is still a dissection of that set, so one order per image size serves every mask; on ROAD's systems it
    halves SuperLU's factorization time against its own minimum-degree orderings (measured on 224 px).
    """
    parts: list[np.ndarray] = []

    def visit(top: int, bottom: int, left: int, right: int) -> None:
        rows, cols = bottom - top, right - left
        if rows <= 0 or cols <= 0:
            return
        if rows * cols <= leaf:
            parts.append((np.arange(top, bottom)[:, None] * width + np.arange(left, right)).ravel())
        elif rows >= cols:
            middle = (top + bottom) // 2
            visit(top, middle, left, right)
            visit(middle + 1, bottom, left, right)
            parts.append(middle * width + np.arange(left, right))
        else:
            middle = (left + right) // 2
            visit(top, bottom, left, middle)
            visit(top, bottom, middle + 1, right)
            parts.append(np.arange(top, bottom) * width + middle)

    visit(0, height, 0, width)
    order = np.concatenate(parts)
    order.flags.writeable = False  # cached and shared between calls
    return order


def linear_imputation(image: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` with every ``missing`` ``[H, W]`` pixel the weighted mean of its in-image neighbours.

    Builds ``A x = b`` over the missing pixels: ``(sum of in-image neighbour weights) x_i - sum_{missing
    j} w_ij x_j = sum_{known j} w_ij v_j`` per channel (the reference's system negated), and solves it
    exactly for all channels at once. ``A`` is a principal submatrix of the image's Neumann Laplacian with
    at least one known neighbour per connected set of unknowns: symmetric positive definite, so the sparse
    LU needs no pivoting and takes the fill-reducing :func:`dissection_order` as it is.
    """
    channels, height, width = image.shape
    flat_missing = missing.reshape(-1)
    out = image.astype(np.float64).reshape(channels, -1).copy()
    index = dissection_order(height, width)
    index = index[flat_missing[index]]  # unknowns, numbered in dissection order
    count = len(index)
    if count == 0:
        return out.reshape(image.shape)
    if count == height * width:
        raise ValueError("ROAD: every pixel is removed, nothing to impute from; use percentages in (0, 100)")
    variable = np.full(height * width, -1, dtype=np.int64)
    variable[index] = np.arange(count)
    ys, xs = np.divmod(index, width)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, channels))
    rows, cols, vals = [], [], []
    for dy, dx, weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        equation = np.flatnonzero(inside)
        neighbour = ny[inside] * width + nx[inside]
        diagonal[equation] += weight
        unknown = flat_missing[neighbour]
        rows.append(equation[unknown])
        cols.append(variable[neighbour[unknown]])
        vals.append(np.full(int(unknown.sum()), -weight))
        # One neighbour per equation and offset, so plain fancy indexing never collides.
        rhs[equation[~unknown]] += weight * out[:, neighbour[~unknown]].T
    rows.append(np.arange(count))
    cols.append(np.arange(count))
    vals.append(diagonal)
    # Imported here: every run imports the metrics package, and scipy.sparse costs ~50 ms to import.
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    system = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)
    ).tocsc()
    factor = splu(system, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    out[:, index] = factor.solve(rhs).T
    return out.reshape(image.shape)


def noisy_linear_imputation(
    image: torch.Tensor, missing: torch.Tensor, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """ROAD's ``NoisyLinearImputer``: linear imputation of ``missing`` plus ``noise`` x N(0, 1) there."""
    filled = linear_imputation(image.detach().cpu().numpy(), missing.detach().cpu().numpy().astype(bool))
    result = torch.from_numpy(filled).float().reshape(image.shape[0], -1)
    index = torch.from_numpy(np.flatnonzero(missing.detach().cpu().numpy().reshape(-1)))
    if noise and len(index):
        result[:, index] += noise * torch.randn(image.shape[0], len(index), generator=generator)
    return result.reshape(image.shape).to(image.device, image.dtype)


class ROAD(FaithfulMetric):
    name = "road"
    keys: ClassVar[tuple[str, ...]] = ("morf_acc", "morf_prob", "lerf_acc", "lerf_prob")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "morf_acc": False,
        "morf_prob": False,
        "lerf_acc": True,
        "lerf_prob": True,
    }

    def __init__(
        self,
        device: torch.device | str = "cpu",
        percentages: list[float] | tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
        noise: float = 0.01,
        chunk_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(device)
        self.percentages = [float(p) for p in percentages]
        if not self.percentages or any(not 0 < p < 100 for p in self.percentages):
            raise ValueError(f"{self.name}: percentages={list(percentages)} must lie in (0, 100)")
        self.noise, self.chunk_size, self.seed = float(noise), int(chunk_size), int(seed)

    def removed(self, rank: torch.Tensor, pixels: int) -> list[torch.Tensor]:
        """Bool masks ``[B, H, W]`` of removed pixels: MoRF for every percentage, then LeRF."""
        cuts = [int(pixels * p / 100) for p in self.percentages]
        return [rank < cut for cut in cuts] + [rank >= cut for cut in cuts]

    def scores(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities and top-1 hits ``[B, 2, P]`` (MoRF, LeRF) and the degenerate-map flags."""
        cams, degenerate = input_cams(batch)
        height, width = cams.shape[-2:]
        rank = pixel_groups(cams, height * width)  # groups of one pixel: the saliency rank itself
        masks = self.removed(rank, height * width)
        mean, std = normalization(batch)
        pixels = batch.inputs * std + mean
        seeds = [image_seed(self.seed, key) for key in image_keys(batch)]
        copies = len(masks)
        classes = batch.pred_classes[:, 0].to(batch.inputs.device)

        def inputs_of(lo: int, hi: int) -> torch.Tensor:
            out = []
            for item in range(lo, hi):
                image, k = divmod(item, copies)
                generator = torch.Generator().manual_seed(seeds[image] + 7919 * k)
                filled = noisy_linear_imputation(pixels[image], masks[k][image], self.noise, generator)
                out.append((filled - mean[0]) / std[0])
            return torch.stack(out)

        logits: list[torch.Tensor] = []
        model = model_of(batch)
        probs = scores_of_items(
            _Recorder(model, logits),
            len(classes) * copies,
            inputs_of,
            classes.repeat_interleave(copies),
            "prob",
            self.chunk_size,
        )
        top1 = torch.cat(logits).argmax(1).to(classes.device) == classes.repeat_interleave(copies)
        shape = (len(classes), 2, len(self.percentages))
        return probs.view(shape), top1.double().view(shape), degenerate

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        probs, hits, degenerate = self.scores(batch)
        out = {
            "morf_acc": hits[:, 0].mean(1),
            "morf_prob": probs[:, 0].mean(1),
            "lerf_acc": hits[:, 1].mean(1),
            "lerf_prob": probs[:, 1].mean(1),
        }
        return out, degenerate


class _Recorder(torch.nn.Module):
    """The model, keeping each chunk's logits so accuracy is read from the same forwards."""

    def __init__(self, model: torch.nn.Module, sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.model, self.sink = model, sink

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs)
        self.sink.append(out.detach())
        return out
