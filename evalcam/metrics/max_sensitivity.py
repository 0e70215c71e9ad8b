"""Max-sensitivity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019, Eq. 4).

``SENS_max(x) = max_{||x' - x||_inf <= r} ||Phi(x') - Phi(x)||`` estimated, as in the paper and Quantus'
``MaxSensitivity``, by Monte-Carlo: ``samples`` copies with uniform noise in ``[-scale, scale]`` (pixel
units) per element, each explained for the clean top-1 class; the image scores the largest change.

With ``relative`` (default, Quantus' convention) the change is divided by ``||Phi(x)||_F`` so methods with
differently scaled maps are comparable; ``relative: false`` is the paper's unnormalized quantity. Norms are
Frobenius over the map at input resolution. Lower is better. Copies that change the prediction are kept
unless ``skip_changed`` (Quantus' ``return_nan_when_prediction_changes`` drops them too).
See :mod:`evalcam.metrics.stability` for batching, degenerate maps and seeding.
"""

from __future__ import annotations

from typing import Any

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.stability import SampledStability


class MaxSensitivity(SampledStability):
    name = "max_sensitivity"

    def __init__(
        self,
        device: torch.device | str = "cpu",
        samples: int = 10,
        noise: str = "uniform",
        scale: float = 0.05,
        relative: bool = True,
        seed: int = 0,
        chunk_size: int = 32,
        skip_changed: bool = False,
    ) -> None:
        super().__init__(device, samples, noise, scale, seed, chunk_size, skip_changed)
        self.relative = bool(relative)

    def objective(
        self,
        batch: EvalBatch,
        context: dict[str, Any],
        images: torch.Tensor,
        clean: torch.Tensor,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        change = (clean - maps).flatten(1).norm(dim=1)
        if not self.relative:
            return change
        return change / clean.flatten(1).norm(dim=1)
