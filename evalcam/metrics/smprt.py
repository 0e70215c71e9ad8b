"""Smooth model parameter randomization test, sMPRT (Hedström et al., "Sanity Checks Revisited: An
Exploration to Repair the Model Parameter Randomisation Test", XAI in Action workshop, NeurIPS 2023;
Quantus ``SmoothMPRT``).

MPRT (Adebayo et al. 2018) compares the map of the original model with the maps after cumulative layer
randomization; gradient-based maps are so noisy that the comparison measures noise as much as the model.
sMPRT denoises first: every map (original model and each randomization step) is the average over
``samples`` explanations of ``x + eps``, ``eps ~ N(0, sigma^2)`` with ``sigma = noise * (max x - min x)``
over the image's network input, the last sample noise-free (Quantus' ``explain_smooth_batch``). The noise
of copy ``s`` of an image is seeded with ``(seed, image_id, s)`` and the SAME for every model, so the
correlations compare models, not noise draws. Averaged maps are taken absolute (Quantus' default
``abs=True``) and compared with the denoised original map by Spearman rank correlation at input
resolution; Quantus' ``normalise`` divides each map by a positive number, which no rank correlation sees,
so none is applied here.

Randomization: cumulative, ``order`` ``"bottom_up"`` (Quantus' and the paper's default) or ``"top_down"``,
over the cascade units of :mod:`evalcam.metrics.randomization`; ``steps`` keeps the first few. Logged:
``step_<k>`` per step, ``final_spearman`` (the last step) and ``mean_spearman`` (the average over steps,
Quantus' ``return_average_correlation``). Lower is better. Cost: ``(steps + 1) * samples`` explanations
per image, chunked ``chunk_size`` inputs per explainer call.

Degenerate maps: a denoised map that is constant or non-finite at the method's own resolution (before
upsampling, whose float ripples would otherwise be ranked) scores 0 and is counted in ``degenerate_maps``
per step (:mod:`evalcam.metrics.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.randomization import ORDERS, SCHEMES, model_explainer, randomization_steps
from evalcam.metrics.reexplain import copy_noise, reexplain, require_eval
from evalcam.metrics.sanity import MAX_STEPS
from evalcam.metrics.stats import flat_maps, spearman


class SmoothMPRT(Metric):
    name = "smprt"
    pred_topk = 1
    higher_is_better: ClassVar[dict[str, bool]] = {"final_spearman": False, "mean_spearman": False}

    def __init__(
        self,
        device: torch.device | str = "cpu",
        samples: int = 10,
        noise: float = 0.1,
        order: str = "bottom_up",
        steps: int | None = None,
        layers: Sequence[str] | None = None,
        scheme: str = "cascade",
        seed: int = 0,
        chunk_size: int = 32,
    ) -> None:
        super().__init__(device)
        if int(samples) < 1:
            raise ValueError(f"smprt: samples must be >= 1, got {samples}")
        if order not in ORDERS:
            raise ValueError(f"smprt: unknown order {order!r}; use one of: {', '.join(ORDERS)}")
        if scheme not in SCHEMES:
            raise ValueError(f"smprt: unknown scheme {scheme!r}; use one of: {', '.join(SCHEMES)}")
        self.samples = int(samples)
        self.noise = float(noise)
        self.order = order
        self.steps = None if steps is None else int(steps)
        self.layers = list(layers) if layers else None
        self.scheme = scheme
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        for state in ("spearman_sum", "count", "degenerate"):
            self.add_state(state, torch.zeros(MAX_STEPS, dtype=torch.float64))
        self.add_state("mean_sum", torch.zeros((), dtype=torch.float64))
        self.add_state("images", torch.zeros((), dtype=torch.float64))

    def smooth_maps(
        self, batch: EvalBatch, model: nn.Module, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, H, W]`` denoised absolute maps of ``classes`` on ``model`` at input size, and ``[B]``
        whether each is flat (constant or non-finite) at the method's own resolution."""
        explainer = model_explainer(batch, model) if model is not batch.explainer.model else batch.explainer
        inputs = batch.inputs
        dims = tuple(range(1, inputs.ndim))
        sigma = self.noise * (inputs.amax(dims) - inputs.amin(dims))
        ids = [s.image_id for s in batch.samples]
        n, per = len(ids), self.samples
        size = tuple(inputs.shape[-2:])

        def inputs_of(items: torch.Tensor) -> torch.Tensor:
            images, copies = items % n, items // n  # copy-major, as the stability metrics
            noise = copy_noise(
                [ids[i] for i in images.tolist()],
                copies.tolist(),
                inputs.shape[1:],
                "gaussian",
                1.0,
                self.seed,
            ).to(inputs.device)
            scale = sigma[images.to(inputs.device)] * (copies != per - 1).to(inputs.device)
            return inputs[images.to(inputs.device)] + noise * scale.view(-1, 1, 1, 1)

        total = torch.zeros(n, *size, dtype=torch.float64, device=inputs.device)
        native: torch.Tensor | None = None
        for items, _, maps, _, _ in reexplain(
            explainer,
            n * per,
            inputs_of,
            lambda items: classes[(items % n).to(classes.device)],
            self.chunk_size,
            None,
        ):
            rows = (items % n).to(inputs.device)
            maps = maps.to(inputs.device)
            if native is None:
                native = torch.zeros(n, *maps.shape[-2:], dtype=torch.float64, device=inputs.device)
            native.index_add_(0, rows, maps)
            total.index_add_(0, rows, upsample(maps, size).double())
        return (total / per).abs(), flat_maps(native)

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        model = batch.explainer.model
        require_eval(model, self.name)
        classes = batch.pred_classes[:, 0].to(batch.inputs.device)
        reference, reference_flat = self.smooth_maps(batch, model, classes)
        per_image: list[list[float]] = [[] for _ in batch.samples]
        sums = torch.zeros(MAX_STEPS, dtype=torch.float64)
        counts = torch.zeros(MAX_STEPS, dtype=torch.float64)
        degenerate = torch.zeros(MAX_STEPS, dtype=torch.float64)
        names: list[str] = []
        for k, (name, randomized) in enumerate(
            randomization_steps(model, self.seed, self.scheme, self.order, self.layers)
        ):
            if (self.steps is not None and k >= self.steps) or k >= MAX_STEPS:
                break
            names.append(name)
            maps, flat = self.smooth_maps(batch, randomized, classes)
            rho, valid = spearman(reference, maps)
            # decided at the method's resolution: upsampled constants carry ripples that rank
            valid = valid & ~flat & ~reference_flat
            rho = torch.where(valid, rho, torch.zeros_like(rho))
            sums[k] += float(rho.sum())
            counts[k] += len(rho)
            degenerate[k] += float((~valid).sum())
            for i, value in enumerate(rho.tolist()):
                per_image[i].append(value)
        if not names:
            raise ValueError("smprt: no randomization step (steps: 0 or a model without parameters)")
        self.spearman_sum = self.spearman_sum + sums.to(self.device)
        self.count = self.count + counts.to(self.device)
        self.degenerate = self.degenerate + degenerate.to(self.device)
        self.mean_sum = self.mean_sum + sum(sum(v) / len(v) for v in per_image)
        self.images = self.images + len(per_image)
        return [
            self.record(
                spearman=values,
                layers=list(names),
                final_spearman=values[-1],
                mean_spearman=sum(values) / len(values),
            )
            for values in per_image
        ]

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        steps = int((self.count > 0).sum())
        for k in range(steps):
            out[f"step_{k + 1:02d}"] = safe_ratio(self.spearman_sum[k], self.count[k])
        if steps:
            out["final_spearman"] = safe_ratio(self.spearman_sum[steps - 1], self.count[steps - 1])
            out["mean_spearman"] = safe_ratio(self.mean_sum, self.images)
        out["steps"] = float(steps)
        out["images"] = float(self.images)
        out["degenerate_maps"] = float(self.degenerate.sum())
        return out
