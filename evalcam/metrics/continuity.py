"""Continuity (Montavon et al., "Methods for Interpreting and Understanding Deep Neural Networks", Digital
Signal Processing 2018, Sec. 5.2, Eq. 9; Quantus ``Continuity``).

``C(x) = max_{x'} ||R(x) - R(x')||_1 / ||x - x'||_2``: an explanation should not jump between nearly
equivalent inputs. As in Quantus the nearby inputs are horizontal translations of the image: ``steps``
shifts ``t_k = -W + (k + 1) * dx`` pixels with ``dx = (2W + 1) // steps`` (W the input width), the
vacated columns filled with ``fill``: ``"black"`` (pixel value 0) or ``"min"`` (the image's minimum
network-input value, Quantus' ``"black"``). A shift of 0 leaves ``x' = x`` (the ratio is round-off over
zero) and is skipped. Maps are compared at input resolution, each divided by its maximum absolute value
first when ``normalize`` (Quantus' default ``normalise=True``, which however divides by the maximum over
the whole batch unless ``normalise_axes`` is given; per map here, so a score never depends on the batch).
Lower is better. See :mod:`evalcam.metrics.stability` for batching and degenerate maps.
"""

from __future__ import annotations

from typing import Any

import torch

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.perturbed_scores import normalization
from evalcam.metrics.stability import SampledStability

FILLS = ("black", "min")


def shifts(width: int, steps: int) -> list[int]:
    """Quantus' translation schedule without the identity shift."""
    dx = (2 * width + 1) // steps
    if dx < 1:
        raise ValueError(f"continuity: {steps} steps exceed the {2 * width + 1} shifts of a {width}-px input")
    return [t for t in (-width + (k + 1) * dx for k in range(steps)) if t != 0]


def translate(inputs: torch.Tensor, shift: int, fill: torch.Tensor) -> torch.Tensor:
    """Shift ``[C, H, W]`` by ``shift`` columns (positive: right); vacated columns get ``fill`` [C, 1, 1]."""
    out = fill.expand_as(inputs).clone()
    width = inputs.shape[-1]
    if shift >= 0:
        out[..., shift:] = inputs[..., : width - shift]
    else:
        out[..., : width + shift] = inputs[..., -shift:]
    return out


class Continuity(SampledStability):
    name = "continuity"

    def __init__(
        self,
        device: torch.device | str = "cpu",
        steps: int = 28,
        fill: str = "black",
        normalize: bool = True,
        chunk_size: int = 32,
        skip_changed: bool = False,
    ) -> None:
        if fill not in FILLS:
            raise ValueError(f"continuity: unknown fill {fill!r}; use one of: {', '.join(FILLS)}")
        self.fill = fill
        self.steps = int(steps)
        self.normalize = bool(normalize)
        self._shifts: list[int] = []
        super().__init__(device, samples=max(1, int(steps)), chunk_size=chunk_size, skip_changed=skip_changed)

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        self._shifts = shifts(int(batch.inputs.shape[-1]), self.steps)
        self.samples = len(self._shifts)
        return super().update(batch)

    def perturb(self, batch: EvalBatch, images: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
        mean, std = normalization(batch)
        rows = []
        for i, k in zip(images.tolist(), copies.tolist(), strict=True):
            x = batch.inputs[i]
            if self.fill == "black":
                value = ((0 - mean) / std)[0]
            else:
                value = x.min().view(1, 1, 1).expand(x.shape[0], 1, 1)
            rows.append(translate(x, self._shifts[k], value))
        return torch.stack(rows)

    def _scaled(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return maps
        peak = maps.flatten(1).abs().amax(1).view(-1, 1, 1)
        return maps / torch.where(peak > 0, peak, torch.ones_like(peak))

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
        change = (self._scaled(clean) - self._scaled(maps)).flatten(1).abs().sum(1)
        step = (batch.inputs[images] - inputs).double().flatten(1).norm(dim=1)
        return change / step.clamp_min(torch.finfo(torch.float64).tiny)
