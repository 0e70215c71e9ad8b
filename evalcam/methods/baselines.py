"""Reference points every method must beat.

- ``center``: a fixed centred Gaussian blob (photographers centre their subject: the centre-bias baseline
  of the pointing-game literature). Its weak-localization box is the central region whose size follows
  from the 15% threshold. In the pointing game its point is TorchRay's centre point ``(w / 2, h / 2)``
  (``benchmark/pointing_game`` experiment ``center``), given exactly through
  :meth:`CenterBaseline.pointing_point` rather than through the argmax of the resampled blob, which
  lands a pixel off on odd sizes.
- ``random``: a Gaussian blob at a random place with a random size, i.e. a *random box* (the chance
  baseline of the localization literature) written as a smooth map. The centre is uniform over the map
  (in the pointing game: a uniformly random point, the chance level of Zhang et al.), the width
  ``sigma`` (a fraction of the map side) uniform in ``sigma_range``, so the 15 % weak-localization box has
  a random centre and a half-side of about ``1.95 * sigma``. Deletion/insertion read it as a random
  region grown from a random point. i.i.d. pixel noise, the obvious alternative, binarises to the whole
  image at any low threshold and then scores exactly like ``center``; it says nothing there.
  The draw is seeded by ``seed`` and by each image's content, so a map does not depend on batch
  composition or on where a resumed run restarted.
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

    @staticmethod
    def pointing_point(size: tuple[int, int]) -> tuple[float, float]:
        """The pointing-game point ``(x, y)`` of an image of ``size = (h, w)``: TorchRay's ``(w/2, h/2)``."""
        h, w = size
        return w / 2, h / 2


class RandomBaseline(_InputFreeExplainer):
    name = "random"

    def __init__(
        self,
        model: torch.nn.Module,
        map_size: tuple[int, int] = (28, 28),
        seed: int = 0,
        sigma_range: tuple[float, float] = (0.05, 0.35),
        **kw: object,
    ) -> None:
        super().__init__(model, map_size)
        self.seed = int(seed or 0)  # None: a config not resolved from the run's seed
        lo, hi = (float(v) for v in sigma_range)
        if not 0 < lo <= hi:
            raise ValueError(
                f"method.params.sigma_range must be [low, high] with 0 < low <= high, got {sigma_range}"
            )
        self.sigma_range = (lo, hi)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        # Per-image seeds from quantized pixel content; drawn on CPU generators for device independence.
        self._seeds = (
            images.detach().mul(64).round().long().flatten(1).sum(1) * 1_000_003 + self.seed
        ).tolist()
        return super().explain(images, targets)

    def blob(self, generator: torch.Generator) -> torch.Tensor:
        """One ``[h, w]`` Gaussian blob with a uniform random centre and width."""
        h, w = self.map_size
        cy, cx, u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        lo, hi = self.sigma_range
        sigma = lo + (hi - lo) * u
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h - cy
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w - cx
        return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2)).float()

    def baseline_maps(self, batch: int, columns: int, device: torch.device) -> torch.Tensor:
        maps = []
        for s in self._seeds:
            generator = torch.Generator().manual_seed(s % (2**63))
            maps.append(torch.stack([self.blob(generator) for _ in range(columns)]))
        return torch.stack(maps).to(device)
