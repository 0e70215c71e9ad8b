"""Shared accumulator of the faithfulness family: per-image values summed per key, degenerate maps counted.

A subclass lists its logged keys in ``keys`` (each a mean over images, with its direction in
``higher_is_better``) and implements :meth:`FaithfulMetric.values`, returning ``[B]`` tensors per key and
the ``[B]`` flags of degenerate maps. The base refuses a model in training mode, keeps one summed state per
key, writes the per-image records ``<name>.<key>`` and logs ``<name>/<key>``, ``images`` and
``degenerate_maps``. A map is degenerate when it holds NaN/Inf, is constant, or is negative everywhere (no
positive evidence to order by); such maps are still scored by the documented fallback of each metric
(raster order, or 0 for a correlation), never NaN.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.imputation import require_eval
from evalcam.metrics.perturbed_scores import model_of
from evalcam.metrics.stats import flat_maps


def degenerate_maps(maps: torch.Tensor) -> torch.Tensor:
    """``[B]`` True for maps ``[B, h, w]`` that are non-finite, constant or negative everywhere."""
    flat = maps.detach().flatten(1)
    negative = torch.isfinite(flat).all(1) & (flat.amax(1) < 0)
    return flat_maps(maps) | negative


def input_cams(batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 maps upsampled to the network input ``[B, H, W]`` (non-finite values set to 0) and their
    degenerate flags, judged on the maps as the method returned them."""
    maps = batch.pred_maps[:, 0].to(batch.inputs.device)
    size = (int(batch.inputs.shape[-2]), int(batch.inputs.shape[-1]))
    cams = upsample(torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0), size)
    return cams.double(), degenerate_maps(maps)


class FaithfulMetric(Metric):
    """Base of the faithfulness family (see the module docstring)."""

    pred_topk = 1
    keys: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[dict[str, bool]] = {}

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        for key in self.keys:
            self.add_state(f"sum_{key}", torch.zeros((), dtype=torch.float64))
        self.add_state("images", torch.zeros((), dtype=torch.float64))
        self.add_state("degenerate", torch.zeros((), dtype=torch.float64))

    def values(self, batch: EvalBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        require_eval(model_of(batch), self.name)
        with torch.no_grad():
            values, degenerate = self.values(batch)
        for key in self.keys:
            column = torch.nan_to_num(values[key].double(), nan=0.0)
            values[key] = column
            setattr(self, f"sum_{key}", getattr(self, f"sum_{key}") + column.sum().to(self.device))
        self.images = self.images + len(batch.samples)
        self.degenerate = self.degenerate + degenerate.sum().to(self.device)
        classes = batch.pred_classes[:, 0].tolist()
        records = []
        for i in range(len(batch.samples)):
            record = {key: float(values[key][i]) for key in self.keys}
            record |= {"class": int(classes[i]), "degenerate": bool(degenerate[i])}
            records.append(self.record(record))
        return records

    def compute(self) -> dict[str, float]:
        out = {key: safe_ratio(getattr(self, f"sum_{key}"), self.images) for key in self.keys}
        out["images"] = float(self.images)
        out["degenerate_maps"] = float(self.degenerate)
        return out
