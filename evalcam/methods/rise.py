"""RISE (Petsiuk, Das, Saenko, BMVC 2018): the map is the expected target score under random masks,

    ``S(x) = 1 / (N * p) * sum_i f(I * M_i) * M_i(x)``   (Eq. 6, ``E[M] = p``)

Masks (Sec. 3.2): ``N`` binary ``s x s`` grids, each cell kept with probability ``p``, upsampled bilinearly to
``(s + 1) * C`` (``C = ceil(H / s)`` the cell size) and cropped to ``H x W`` at a random shift in ``[0, C)``,
so their edges fall anywhere, not on a fixed lattice. The upsampling is the authors' exactly
(``skimage.transform.resize(grid, up_size, order=1, mode='reflect', anti_aliasing=False)`` in their
``generate_masks``): half-pixel centres, and outside the grid's outermost cell centres the grid is mirrored
without repeating the edge cell (numpy's ``reflect``), where ``F.interpolate`` would clamp to the edge.
``I * M`` multiplies the network input, so a masked-out pixel becomes 0 in the normalized space, the
dataset's mean colour (the authors' code does the same).

``f`` is the target's softmax probability by default (the paper's black-box setting). ``score: sigmoid`` is
TorchRay's variant for its multi-label VOC/COCO models (which also uses 8000 masks and divides by ``N`` only:
a constant factor, invisible to every metric that normalizes maps). Maps are at input resolution.

The grids and shifts come from one generator seeded with ``seed``: every image sees the same masks, so an
image's map does not depend on its batch or on ``chunk_size``, and a run is reproducible. One set of masked
passes serves every target of an image (``TopK(5)`` costs what ``TopK(1)`` costs). Cost: ``N`` forward passes
per image, ``chunk_size`` network inputs per pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from evalcam.methods.base import Explainer, Explanation, Targets, resolve_targets
from evalcam.methods.score_ablation import column_scores


def rise_grids(num_masks: int, cells: int, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary grids ``[N, s, s]`` (1 = kept, probability ``p``) and shift fractions ``[N, 2]`` in ``[0, 1)``.

    Tiny (``N * (s*s + 2)`` numbers), so they are drawn once; shifts become pixels once the input size is
    known (:func:`rise_masks`).
    """
    generator = torch.Generator().manual_seed(int(seed))
    grids = (torch.rand(num_masks, cells, cells, generator=generator) < p).float()
    shifts = torch.rand(num_masks, 2, generator=generator)
    return grids, shifts


def _reflect_weights(out: int, cells: int, offset: torch.Tensor, length: int) -> torch.Tensor:
    """Bilinear weights ``[n, length, cells]``: rows ``offset .. offset + length - 1`` of a grid axis of
    ``cells`` resized to ``out`` with half-pixel centres and numpy-``reflect`` borders (skimage's
    ``resize(order=1, mode='reflect')``)."""
    rows = offset[:, None] + torch.arange(length, device=offset.device)  # [n, length]
    src = (rows.double() + 0.5) * (cells / out) - 0.5
    low = torch.floor(src)
    frac = (src - low).float()
    low = low.long()

    def reflect(index: torch.Tensor) -> torch.Tensor:
        if cells == 1:
            return torch.zeros_like(index)
        period = 2 * (cells - 1)
        index = torch.remainder(index, period)
        return torch.where(index >= cells, period - index, index)

    weights = torch.zeros(*rows.shape, cells, device=offset.device)
    weights.scatter_add_(-1, reflect(low)[..., None], (1 - frac)[..., None])
    weights.scatter_add_(-1, reflect(low + 1)[..., None], frac[..., None])
    return weights


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Smooth masks ``[n, H, W]`` in ``[0, 1]`` from grids ``[n, s, s]`` and shift fractions ``[n, 2]``."""
    height, width = size
    cells = grids.shape[-1]
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    dy = (shifts[:, 0] * cell_h).long().clamp_max(cell_h - 1)
    dx = (shifts[:, 1] * cell_w).long().clamp_max(cell_w - 1)
    # Only the cropped window of the (s + 1) * C resize is ever used: separable weights for it.
    rows = _reflect_weights((cells + 1) * cell_h, cells, dy.to(grids.device), height)  # [n, H, s]
    cols = _reflect_weights((cells + 1) * cell_w, cells, dx.to(grids.device), width)  # [n, W, s]
    masks = torch.einsum("nhs,nst,nwt->nhw", rows, grids.float(), cols)
    # Weights can sum to 1 + 1 ulp; masks must stay in [0, 1].
    return masks.clamp_(0.0, 1.0)


class RISE(Explainer):
    """RISE maps ``[B, K, H, W]`` of the target scores (see the module docstring)."""

    name = "rise"

    def __init__(
        self,
        model: nn.Module,
        num_masks: int = 4000,
        cells: int = 7,
        p: float = 0.5,
        seed: int | None = 0,  # None: not resolved from the run's seed (evalcam.stats.seed); 0
        score: str = "prob",
        chunk_size: int = 64,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, autocast=autocast)
        if int(num_masks) < 1 or int(cells) < 1 or not 0.0 < float(p) <= 1.0:
            raise ValueError(
                f"rise needs num_masks >= 1, cells >= 1 and 0 < p <= 1, got {num_masks}, {cells} and {p}"
            )
        if score not in ("prob", "sigmoid", "logit"):
            raise ValueError(f"rise score must be 'prob', 'sigmoid' or 'logit', got {score!r}")
        self.num_masks, self.cells, self.p, self.seed = int(num_masks), int(cells), float(p), int(seed or 0)
        self.score, self.chunk_size = score, int(chunk_size)
        self._grids, self._shifts = rise_grids(self.num_masks, self.cells, self.p, self.seed)

    @torch.no_grad()
    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        x = images.to(self.device)
        b = x.shape[0]
        size = (int(x.shape[-2]), int(x.shape[-1]))
        with self._autocast():
            logits = self.model(x).float()
        classes, score_fns = resolve_targets(targets, logits)
        saliency = torch.zeros(b, len(score_fns), *size, device=x.device)
        # Masks per pass: every image of the batch sees each mask of the chunk, so callable targets get
        # whole [B, num_classes] batches, the layout they were written for.
        per_pass = max(1, self.chunk_size // b)
        for start in range(0, self.num_masks, per_pass):
            part = slice(start, min(self.num_masks, start + per_pass))
            masks = rise_masks(self._grids[part].to(x.device), self._shifts[part].to(x.device), size)
            masked = masks[:, None, None] * x[None]  # [m, B, channels, H, W]
            with self._autocast():
                outputs = self.model(masked.flatten(0, 1).to(x.dtype))
            scores = column_scores(
                outputs.view(len(masks), b, -1), classes, score_fns, self.score
            )  # [m, B, K]
            saliency += torch.einsum("mbk,mhw->bkhw", scores, masks)
        return Explanation(maps=saliency / (self.num_masks * self.p), logits=logits, classes=classes)
