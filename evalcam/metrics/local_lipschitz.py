"""Local Lipschitz estimate (Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods",
ICML WHI 2018, Eq. 2; Quantus ``LocalLipschitzEstimate``).

``L(x) = max_{x' in N(x)} ||Phi(x) - Phi(x')||_2 / ||x - x'||_2``, the neighbourhood sampled with
``samples`` Gaussian copies ``x' = x + N(0, scale^2)`` (pixel units; the network sees ``x + noise / std``,
and the denominator is measured on the network inputs, the space the model and Quantus see). Maps are
compared at input resolution. Lower is better. See :mod:`evalcam.metrics.stability` for batching,
degenerate maps and seeding.
"""

from __future__ import annotations

from typing import Any

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.stability import SampledStability


class LocalLipschitz(SampledStability):
    name = "local_lipschitz"

    def __init__(
        self,
        device: torch.device | str = "cpu",
        samples: int = 10,
        noise: str = "gaussian",
        scale: float = 0.025,
        seed: int = 0,
        chunk_size: int = 32,
        skip_changed: bool = False,
    ) -> None:
        super().__init__(device, samples, noise, scale, seed, chunk_size, skip_changed)

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
        step = (batch.inputs[images] - inputs).double().flatten(1).norm(dim=1)
        return change / step.clamp_min(torch.finfo(torch.float64).tiny)
