"""Base of the robustness metrics that take the worst case of an explanation change over perturbed copies
of each image (max-sensitivity, local Lipschitz estimate, RIS/ROS/RRS, continuity).

For each image (target: its clean top-1 class ``c``, whose map the runner already computed) ``samples``
perturbed copies ``x'`` are explained for ``c`` by ``batch.explainer``, chunked over all copies of all
images of the batch; a subclass turns each copy into a number (:meth:`SampledStability.objective`) and
the image scores the maximum over its copies. Copies are ordered copy-major (item ``s * B + i`` is copy
``s`` of image ``i``), so a chunk holds the same copy of consecutive images. Maps are compared at the input
resolution (bilinear upsampling, as in Quantus, whose attributions live in the input space), in float64.

- Copies whose top-1 class differs from ``c`` are dropped when ``skip_changed`` (the RIS/ROS/RRS papers'
  condition ``argmax f(x') = argmax f(x)``); their number is logged as ``changed_predictions``.
- A clean map that is constant or non-finite cannot be compared (its sensitivity would be trivially 0 or
  undefined): the image is counted in ``degenerate_maps`` and scores nothing. A non-finite perturbed map
  also counts in ``degenerate_maps`` and that copy is dropped. An image left without any copy is counted in
  ``unmeasured`` and scores nothing: means are over measured images only, never NaN.
- Noise is in pixel units (images in [0, 1]) and added without clipping, so the perturbation is exactly
  the drawn one; the network sees ``x + noise / std``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.perturbed_scores import normalization
from evalcam.metrics.reexplain import NOISES, copy_noise, reexplain, require_eval
from evalcam.metrics.stats import flat_maps


class SampledStability(Metric):
    """Worst case over perturbed copies; subclasses set ``name`` and implement :meth:`objective`."""

    pred_topk = 1
    higher_is_better: ClassVar[dict[str, bool]] = {"score": False}
    omitted_when_empty: ClassVar[tuple[str, ...]] = ("score",)

    def __init__(
        self,
        device: torch.device | str = "cpu",
        samples: int = 10,
        noise: str = "uniform",
        scale: float = 0.05,
        seed: int = 0,
        chunk_size: int = 32,
        skip_changed: bool = False,
    ) -> None:
        super().__init__(device)
        if int(samples) < 1:
            raise ValueError(f"{self.name}: samples must be >= 1, got {samples}")
        if noise not in NOISES:
            raise ValueError(f"{self.name}: unknown noise {noise!r}; use one of: {', '.join(NOISES)}")
        if not float(scale) > 0:
            raise ValueError(f"{self.name}: scale must be > 0 (pixel units), got {scale}")
        self.samples = int(samples)
        self.noise = noise
        self.scale = float(scale)
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self.skip_changed = bool(skip_changed)
        for state in ("score_sum", "measured", "images", "degenerate", "unmeasured", "changed", "copies"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    # -- hooks for subclasses -------------------------------------------------------------------------
    def perturb(self, batch: EvalBatch, images: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
        """Network inputs of copy ``copies[i]`` of image ``images[i]``: seeded noise in pixel units."""
        _, std = normalization(batch)
        ids = [batch.samples[int(i)].image_id for i in images]
        noise = copy_noise(
            ids,
            copies.tolist(),
            batch.inputs.shape[1:],
            self.noise,
            self.scale,
            self.seed,
            batch.inputs.device,
        )
        return batch.inputs[images.to(batch.inputs.device)] + noise / std

    def capture_layer(self, batch: EvalBatch) -> str | None:
        """A layer whose output on each copy the objective reads (``context["captured"]``, None when
        the explainer's pass could not provide it)."""
        return None

    def prepare(self, batch: EvalBatch) -> dict[str, Any]:
        """Per-batch quantities of the clean inputs an objective needs (e.g. representations)."""
        return {}

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
        """``[n]`` float64 score of each copy; ``clean`` are the clean maps of ``images`` at input size."""
        raise NotImplementedError

    # -- accumulation ---------------------------------------------------------------------------------
    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        require_eval(batch.explainer.model, self.name)
        n, copies_per_image = len(batch.samples), self.samples
        size = tuple(batch.inputs.shape[-2:])
        device = batch.inputs.device
        classes = batch.pred_classes[:, 0].to(device)
        clean_pred = batch.logits.argmax(-1).to(device)
        clean = upsample(batch.pred_maps[:, 0].detach(), size).double()
        flat = flat_maps(batch.pred_maps[:, 0]).to(device)
        context = self.prepare(batch)
        best = torch.full((n,), -torch.inf, dtype=torch.float64, device=device)
        kept = torch.zeros(n, dtype=torch.long, device=device)
        changed_per_image = torch.zeros(n, dtype=torch.long, device=device)
        bad_copies = 0
        for items, inputs, maps, logits, captured in reexplain(
            batch.explainer,
            n * copies_per_image,
            lambda items: self.perturb(batch, items % n, items // n),
            lambda items: classes[(items % n).to(device)],
            self.chunk_size,
            size,
            self.capture_layer(batch),
        ):
            images = (items % n).to(device)
            context["captured"] = captured
            with torch.no_grad():
                score = self.objective(batch, context, images, clean[images], inputs, maps, logits).to(device)
            finite_map = torch.isfinite(maps).flatten(1).all(1).to(device)
            changed = logits.argmax(-1).to(device) != clean_pred[images]
            keep = finite_map & torch.isfinite(score) & ~flat[images]
            if self.skip_changed:
                keep &= ~changed
            changed_per_image.scatter_add_(0, images, changed.long())
            bad_copies += int((~finite_map).sum())
            best.scatter_reduce_(0, images[keep], score[keep], reduce="amax")
            kept.scatter_add_(0, images[keep], torch.ones_like(images[keep]))
        measured = (kept > 0) & ~flat
        records: list[dict[str, Any]] = []
        for i in range(n):
            rec: dict[str, Any] = {"changed_predictions": float(changed_per_image[i]) / copies_per_image}
            if bool(measured[i]):
                rec["score"] = float(best[i])
            records.append(self.record(rec))
        self.score_sum = self.score_sum + float(best[measured].sum())
        self.measured = self.measured + float(measured.sum())
        self.images = self.images + n
        self.degenerate = self.degenerate + float(flat.sum()) + bad_copies
        self.unmeasured = self.unmeasured + float(((kept == 0) & ~flat).sum())
        self.changed = self.changed + float(changed_per_image.sum())
        self.copies = self.copies + n * copies_per_image
        return records

    def compute(self) -> dict[str, float]:
        out = {"score": safe_ratio(self.score_sum, self.measured)} if float(self.measured) > 0 else {}
        out.update(
            images=float(self.images),
            measured=float(self.measured),
            unmeasured=float(self.unmeasured),
            degenerate_maps=float(self.degenerate),
        )
        if float(self.copies) > 0:  # a share of the copies: left out, like the score, before any copy
            out["changed_predictions"] = safe_ratio(self.changed, self.copies)
        return out
