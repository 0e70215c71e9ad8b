"""Reference points every method must beat.

- ``center``: a fixed centred Gaussian blob (photographers centre their subject: the centre-bias baseline
  of the pointing-game literature). Its weak-localization box is the central region whose size follows
  from the 15% threshold.
- ``random``: i.i.d. uniform noise at feature resolution, seeded from each image's content so a map does
  not depend on batch composition or on where a resumed run restarted.
"""

from __future__ import annotations

import torch

from evalcam.methods.base import Explainer, Explanation, Targets, resolve_targets


class _InputFreeExplainer(Explainer):
    """Baselines ignore the gradients but still report the model's logits and explained classes."""

    def __init__(self, model: torch.nn.Module, map_size: tuple[int, int] = (7, 7), **_: object) -> None:
        super().__init__(model)
        self.map_size = tuple(map_size)

    def baseline_maps(self, batch: int, columns: int, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        with torch.no_grad():
            logits = self.model(images).float()
        classes, score_fns = resolve_targets(targets, logits)
        maps = self.baseline_maps(images.shape[0], len(score_fns), images.device)
        return Explanation(maps=maps, logits=logits, classes=classes)


class CenterBaseline(_InputFreeExplainer):
    name = "center"

    def __init__(
        self, model: torch.nn.Module, map_size: tuple[int, int] = (7, 7), sigma: float = 0.25, **kw: object
    ) -> None:
        super().__init__(model, map_size)
        self.sigma = sigma

    def baseline_maps(self, batch: int, columns: int, device: torch.device) -> torch.Tensor:
        h, w = self.map_size
        ys = (torch.arange(h, device=device) + 0.5) / h - 0.5
        xs = (torch.arange(w, device=device) + 0.5) / w - 0.5
        blob = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * self.sigma**2))
        return blob.expand(batch, columns, h, w).clone()


class RandomBaseline(_InputFreeExplainer):
    name = "random"

    def __init__(
        self, model: torch.nn.Module, map_size: tuple[int, int] = (7, 7), seed: int = 0, **kw: object
    ) -> None:
        super().__init__(model, map_size)
        self.seed = int(seed or 0)  # None: a config not resolved from the run's seed

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        # Per-image seeds from quantized pixel content; drawn on CPU generators for device independence.
        self._seeds = (
            images.detach().mul(64).round().long().flatten(1).sum(1) * 1_000_003 + self.seed
        ).tolist()
        return super().explain(images, targets)

    def baseline_maps(self, batch: int, columns: int, device: torch.device) -> torch.Tensor:
        maps = [
            torch.rand(columns, *self.map_size, generator=torch.Generator().manual_seed(s % (2**63)))
            for s in self._seeds
        ]
        return torch.stack(maps).to(device)
