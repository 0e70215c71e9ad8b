"""Relative input / output / representation stability (Agarwal et al., "Rethinking Stability for
Attribution-based Explanations", ICLR PAIR2Struct workshop 2022, Eqs. 2-5; Quantus
``RelativeInputStability``, ``RelativeOutputStability``, ``RelativeRepresentationStability``).

For perturbed copies ``x'`` whose top-1 class equals the clean one (the paper's condition, so copies that
change the prediction are dropped: ``skip_changed`` defaults to true), with ``e`` the map of the clean
top-1 class at input resolution and elementwise ratios guarded as ``e + (e == 0) * eps_min``:

- RIS ``= max ||(e_x - e_x') / e_x||_2 / max(||(x - x') / x||_2, eps_min)`` (``x`` the network input),
- ROS ``= max ||(e_x - e_x') / e_x||_2 / max(||h(x) - h(x')||_2, eps_min)`` (``h`` the logits),
- RRS ``= max ||(e_x - e_x') / e_x||_2 / max(||(L_x - L_x') / L_x||_2, eps_min)`` (``L`` the output of
  ``layer``, default the model's CAM layer; read from the explainer's own forward pass when it made
  exactly one, else from one extra forward per chunk).

Lower is better. The elementwise ratios are the paper's, and on ReLU networks they are dominated by the
guard: a unit that is 0 on ``x`` and not on ``x'`` contributes ``|L_x'| / eps_min``, so RRS at a ReLU layer
is tiny (about 1e-6 at EfficientNet-Lite0's ``head_act`` on the sample images), and the same holds for the
numerator wherever a CAM is zero; compare these numbers across methods, not with other metrics.

Quantus deviates from the paper in two places: it takes ``np.max`` over
copies with dropped copies set to NaN, so ONE copy that changes the prediction makes the image's score NaN
(here the maximum runs over the kept copies, as in the paper), and it adds ``eps_min`` to a zero
denominator instead of ``max(., eps_min)`` (identical unless the denominator is below ``eps_min``; only the
first is exercised by a test). Noise: uniform in ``[-scale, scale]`` pixel units (Quantus' default
perturbation is uniform noise too). See :mod:`evalcam.metrics.stability` for batching, degenerate maps
and seeding.
"""

from __future__ import annotations

from typing import Any

import torch

from evalcam.methods.base import capture_activations
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.stability import SampledStability
from evalcam.models.layers import resolve_layer


def relative_change(a: torch.Tensor, b: torch.Tensor, eps_min: float) -> torch.Tensor:
    """``||(a - b) / a||_2`` per row of ``[n, ...]`` tensors, zeros of ``a`` replaced by ``eps_min``."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return ((a - b) / (a + (a == 0) * eps_min)).norm(dim=1)


class _RelativeStability(SampledStability):
    def __init__(
        self,
        device: torch.device | str = "cpu",
        samples: int = 10,
        noise: str = "uniform",
        scale: float = 0.05,
        eps_min: float = 1e-6,
        seed: int = 0,
        chunk_size: int = 32,
        skip_changed: bool = True,
    ) -> None:
        super().__init__(device, samples, noise, scale, seed, chunk_size, skip_changed)
        self.eps_min = float(eps_min)

    def denominator(
        self, batch: EvalBatch, context: dict[str, Any], images: torch.Tensor, inputs: torch.Tensor, logits
    ) -> torch.Tensor:
        raise NotImplementedError

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
        numerator = relative_change(clean, maps, self.eps_min)
        den = self.denominator(batch, context, images, inputs, logits).to(numerator.device)
        return numerator / den.clamp_min(self.eps_min)


class RelativeInputStability(_RelativeStability):
    name = "relative_input_stability"

    def denominator(self, batch, context, images, inputs, logits) -> torch.Tensor:
        return relative_change(batch.inputs[images.to(batch.inputs.device)], inputs, self.eps_min)


class RelativeOutputStability(_RelativeStability):
    name = "relative_output_stability"

    def denominator(self, batch, context, images, inputs, logits) -> torch.Tensor:
        clean = batch.logits[images.to(batch.logits.device)].double()
        return (clean - logits.double().to(clean.device)).norm(dim=1)


class RelativeRepresentationStability(_RelativeStability):
    name = "relative_representation_stability"

    def __init__(
        self,
        device: torch.device | str = "cpu",
        samples: int = 10,
        noise: str = "uniform",
        scale: float = 0.05,
        eps_min: float = 1e-6,
        layer: str | None = None,
        seed: int = 0,
        chunk_size: int = 32,
        skip_changed: bool = True,
    ) -> None:
        super().__init__(device, samples, noise, scale, eps_min, seed, chunk_size, skip_changed)
        self.layer = layer

    def _layer(self, batch: EvalBatch) -> str:
        layer = self.layer or (batch.bundle.target_layer if batch.bundle is not None else None)
        if not layer:
            raise ValueError(f"{self.name}: no representation layer; set metrics.{self.name}.layer")
        resolve_layer(batch.explainer.model, layer.split(",")[0].strip())
        return layer.split(",")[0].strip()

    @torch.no_grad()
    def representations(self, batch: EvalBatch, inputs: torch.Tensor) -> torch.Tensor:
        layer = self._layer(batch)
        with capture_activations(batch.explainer.model, [layer]) as store:
            batch.explainer.model(inputs)
        return store.activations[layer].detach().flatten(1).double()

    def prepare(self, batch: EvalBatch) -> dict[str, Any]:
        return {"clean": self.representations(batch, batch.inputs)}

    def capture_layer(self, batch: EvalBatch) -> str | None:
        return self._layer(batch)

    def denominator(self, batch, context, images, inputs, logits) -> torch.Tensor:
        clean = context["clean"][images.to(context["clean"].device)]
        perturbed = context.get("captured")
        if perturbed is None:  # the explainer's own pass did not give it: one more forward
            perturbed = self.representations(batch, inputs)
        return relative_change(clean, perturbed.to(clean.device), self.eps_min)
