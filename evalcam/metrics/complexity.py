"""Complexity of a map (Quantus's "complexity" family), no extra forward pass.

Protocol shared by the three metrics: the map of the top-1 predicted class (``batch.pred_maps[:, 0]``) is
upsampled bilinearly to the network input (``upsample: true``, default; what Quantus scores when given
input-sized attributions) or scored at the method's resolution (``upsample: false``), its absolute value is
taken, and one number per image is computed batched on the device (:mod:`evalcam.metrics.mask_scores`):

- ``sparseness/gini``: Gini index (Chalasani et al., "Concise explanations of neural networks using
  adversarial training", ICML 2020), higher = sparser;
- ``complexity/entropy``: entropy of the fractional contributions (Bhatt et al., "Evaluating and
  aggregating feature-based model explanations", IJCAI 2020), lower = simpler;
- ``effective_complexity/count`` (and ``/fraction`` of the pixels): features whose ``|a| / max|a|``
  exceeds ``eps`` (Nguyen & Martinez, "On quantitative aspects of model interpretability", 2020),
  lower = simpler.

A degenerate map (non-finite, constant, or without a positive value: it singles out nothing for the class)
is scored as a uniform map scores (Gini 0, entropy ``log n``, count ``n``) and counted in
``<name>/degenerate_maps``. Logged values are means over images; each record holds the image's value.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.mask_scores import degenerate_rows, effective_count, entropy, gini


class _ComplexityMetric(Metric):
    """Per-image score of the top-1 map; subclasses set ``keys`` and implement :meth:`scores`."""

    pred_topk = 1
    keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: torch.device | str = "cpu", upsample: bool = True) -> None:
        super().__init__(device)
        self.upsample = bool(upsample)
        for key in self.keys:
            self.add_state(f"sum_{key}", torch.zeros((), dtype=torch.float64))
        for state in ("images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def scores(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def uniform(self, n: int) -> dict[str, float]:
        """What a uniform map of ``n`` pixels scores: the value given to a degenerate map."""
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        maps = batch.pred_maps[:, 0].to(self.device)
        degenerate = degenerate_rows(maps)  # judged on the method's own map, before resampling
        if self.upsample:
            maps = upsample(maps, tuple(batch.inputs.shape[-2:]))
        n = maps[0].numel()
        values = {
            key: torch.full((maps.shape[0],), v, dtype=torch.float64, device=self.device)
            for key, v in self.uniform(n).items()
        }
        valid = ~degenerate
        if bool(valid.all()):  # the usual case: no copy of the maps
            values = self.scores(maps)
        elif bool(valid.any()):
            for key, value in self.scores(maps[valid]).items():
                values[key][valid] = value
        for key in self.keys:
            setattr(self, f"sum_{key}", getattr(self, f"sum_{key}") + values[key].sum())
        self.images = self.images + maps.shape[0]
        self.degenerate = self.degenerate + degenerate.sum().double()
        columns = {key: values[key].cpu().tolist() for key in self.keys}
        return [
            self.record({key: columns[key][i] for key in self.keys}, degenerate=bool(d))
            for i, d in enumerate(degenerate.cpu().tolist())
        ]

    def compute(self) -> dict[str, float]:
        # NaN when nothing was evaluated: no number rather than a plausible 0
        out = {key: safe_ratio(getattr(self, f"sum_{key}"), self.images) for key in self.keys}
        return out | {"images": float(self.images), "degenerate_maps": float(self.degenerate)}


class Sparseness(_ComplexityMetric):
    """Gini index of the absolute map (Chalasani et al. 2020); Quantus ``Sparseness``."""

    name = "sparseness"
    keys = ("gini",)
    higher_is_better: ClassVar[dict[str, bool]] = {"gini": True}

    def scores(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gini": gini(maps)}

    def uniform(self, n: int) -> dict[str, float]:
        return {"gini": 0.0}


class Complexity(_ComplexityMetric):
    """Entropy of the fractional contributions (Bhatt et al. 2020); Quantus ``Complexity``."""

    name = "complexity"
    keys = ("entropy",)
    higher_is_better: ClassVar[dict[str, bool]] = {"entropy": False}

    def scores(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"entropy": entropy(maps)}

    def uniform(self, n: int) -> dict[str, float]:
        return {"entropy": math.log(n)}


class EffectiveComplexity(_ComplexityMetric):
    """Features above ``eps`` of the max-normalised absolute map (Nguyen & Martinez 2020); Quantus
    ``EffectiveComplexity`` (same ``eps`` default, 1e-5)."""

    name = "effective_complexity"
    keys = ("count", "fraction")
    higher_is_better: ClassVar[dict[str, bool]] = {"count": False, "fraction": False}

    def __init__(self, device: torch.device | str = "cpu", upsample: bool = True, eps: float = 1e-5) -> None:
        if not 0 <= float(eps) < 1:
            raise ValueError(
                f"metrics.effective_complexity.eps={eps} must lie in [0, 1); the default is 1e-5"
            )
        super().__init__(device, upsample)
        self.eps = float(eps)

    def scores(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        count = effective_count(maps, self.eps)
        return {"count": count, "fraction": count / maps[0].numel()}

    def uniform(self, n: int) -> dict[str, float]:
        return {"count": float(n), "fraction": 1.0}
