"""Sufficiency (Dasgupta, Frost & Moshkovitz, "Framework for Evaluating Faithfulness of Local
Explanations", ICML 2022), within each batch as Quantus computes it.

An explanation is sufficient when inputs with similar explanations get the same prediction. The top-1
maps of a batch are upsampled to the input, made absolute and divided by the largest value of the whole
batch (Quantus's ``abs`` + ``normalise_by_max``, which reduces over every axis of the batch array: one
scale for all maps, so a map and a multiple of it stay apart; the distances below do not depend on that
scale); pairwise standardized Euclidean distances (``scipy``'s ``seuclidean``: each pixel's squared
difference divided by its variance over the batch, ``ddof = 1``; pixels with zero variance carry no
information and are left out, where scipy's division by zero makes every distance NaN and Quantus then
finds no neighbours) are divided by the largest one. For each image, the
neighbours are the *other* images at distance ``<= threshold``; its value is the fraction of them with the
same top-1 predicted class (higher is better), 0 when it has none (as Quantus; counted in
``no_neighbours``). No extra forward is needed. The value depends on which images share a batch, as in
Quantus (``batch_dependent``: the runner never splits a batch); the paper's dataset-level version would
compare each image with all others.

A degenerate map (NaN/Inf, constant, or negative everywhere) is counted in ``degenerate_maps`` and still
scored: non-finite values count as 0 and ties fall back to raster order (see
:mod:`evalcam.metrics.faithful_base`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import FaithfulMetric, input_cams


def normalized_distances(maps: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` seuclidean distances of ``|maps|`` / (the batch's max), divided by the largest distance."""
    flat = maps.flatten(1).double().abs()
    flat = flat / flat.max().clamp_min(1e-300)
    variance = flat.var(0, unbiased=True) if flat.shape[0] > 1 else torch.zeros_like(flat[0])
    keep = variance > 0
    scaled = flat[:, keep] / variance[keep].sqrt()
    distance = torch.cdist(scaled, scaled, compute_mode="donot_use_mm_for_euclid_dist")
    largest = distance.max()
    return distance / largest if largest > 0 else distance


class Sufficiency(FaithfulMetric):
    name = "sufficiency"
    keys: ClassVar[tuple[str, ...]] = ("sufficiency",)
    higher_is_better: ClassVar[dict[str, bool]] = {"sufficiency": True}
    batch_dependent = True  # neighbours are the other images of the batch

    def __init__(self, device: torch.device | str = "cpu", threshold: float = 0.6) -> None:
        super().__init__(device)
        self.threshold = float(threshold)
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"{self.name}: threshold={threshold} must lie in [0, 1] (distances are scaled)")
        self.add_state("no_neighbours", torch.zeros((), dtype=torch.float64))

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cams, degenerate = input_cams(batch)
        close = normalized_distances(cams) <= self.threshold
        close.fill_diagonal_(False)
        classes = batch.pred_classes[:, 0].to(close.device)
        same = classes[None, :] == classes[:, None]
        neighbours = close.sum(1)
        value = (close & same).sum(1).double() / neighbours.clamp_min(1)
        self.no_neighbours = self.no_neighbours + (neighbours == 0).sum().double().to(self.device)
        return {"sufficiency": value}, degenerate

    def compute(self) -> dict[str, Any]:
        out = super().compute()
        out["no_neighbours"] = float(self.no_neighbours)
        return out
