"""The batch step of a run: explain each batch once, then feed the same maps to every metric.

The runner and the benchmark both go through :func:`evaluate_batch`, so the timed work is the run's
work. A :class:`RunContext` holds what stays fixed over a run (model bundle, explainer, metrics, how
many classes are explained, the device, the keeper of example maps) instead of loose arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from evalcam.data.types import Sample
from evalcam.methods.base import Explainer, TopK
from evalcam.metrics.base import EvalBatch, Metric
from evalcam.models.bundle import ModelBundle

if TYPE_CHECKING:
    from evalcam.pacing import ExampleMaps


@dataclass
class RunContext:
    """What every batch of a run shares. ``topk`` and ``need_gt`` already account for the metrics (see
    :meth:`build`)."""

    bundle: ModelBundle
    explainer: Explainer
    metrics: Sequence[Metric]
    topk: int
    need_gt: bool
    device: torch.device
    examples: ExampleMaps | None = None

    @classmethod
    def build(
        cls,
        bundle: ModelBundle,
        explainer: Explainer,
        metrics: Sequence[Metric],
        device: torch.device,
        topk: int = 5,
        examples: ExampleMaps | None = None,
    ) -> RunContext:
        """Explain at least ``topk`` predicted classes, more when a metric asks for more, and the
        ground-truth classes when any metric reads their maps."""
        return cls(
            bundle=bundle,
            explainer=explainer,
            metrics=metrics,
            topk=max([m.pred_topk for m in metrics] + [int(topk)]),
            need_gt=any(m.needs_gt_maps for m in metrics),
            device=device,
            examples=examples,
        )

    def reset_metrics(self) -> None:
        for metric in self.metrics:
            metric.reset()

    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every metric's accumulated state, by metric name (what a result part stores)."""
        return {m.name: m.state_dict() for m in self.metrics}

    def preprocess(self, samples: Sequence[Sample]) -> torch.Tensor:
        return self.bundle.preprocess([s.image for s in samples], self.device)

    def explain(self, samples: list[Sample], inputs: torch.Tensor) -> EvalBatch:
        return explain_batch(samples, inputs, self.bundle, self.explainer, self.topk, self.need_gt)


def explain_batch(
    samples: list[Sample],
    inputs: torch.Tensor,
    bundle: ModelBundle,
    explainer: Explainer,
    topk: int,
    need_gt: bool,
) -> EvalBatch:
    """Maps of the top-``topk`` predicted classes and, when asked, of every ground-truth class: what every
    metric reads, computed once per batch."""
    pred = explainer.explain(inputs, TopK(topk))
    gt_classes = gt_maps = None
    if need_gt:
        width = max(len(s.labels) for s in samples)
        rows = [s.labels + [-1] * (width - len(s.labels)) for s in samples]
        gt_classes = torch.tensor(rows, dtype=torch.long, device=inputs.device)
        # Padding (-1) is explained as class 0 and ignored by the metrics through gt_classes.
        gt_maps = explainer.explain(inputs, gt_classes.clamp_min(0)).maps
    return EvalBatch(
        samples=samples,
        inputs=inputs,
        logits=pred.logits,
        pred_classes=pred.classes,
        pred_maps=pred.maps,
        explainer=explainer,
        bundle=bundle,
        gt_classes=gt_classes,
        gt_maps=gt_maps,
    )


def prediction_rows(batch: EvalBatch) -> list[dict[str, Any]]:
    """The per-image columns every run has, whatever its metrics: labels, top-5 classes and their
    probabilities, loader warnings."""
    probs = batch.logits.softmax(-1).gather(1, batch.pred_classes).cpu()
    return [
        {
            "image_id": s.image_id,
            "status": "ok",
            "error": None,
            "labels": list(s.labels),
            "pred_top5": batch.pred_classes[i, :5].cpu().tolist(),
            "pred_top5_prob": probs[i, :5].tolist(),
            "warnings": list(s.warnings),
        }
        for i, s in enumerate(batch.samples)
    ]


def evaluate_batch(samples: list[Sample], context: RunContext) -> list[dict[str, Any]]:
    """One batch of a run: preprocess, explain once, update every metric; one row per image with the
    metrics' per-image records merged in (accumulated metric states stay in ``context.metrics``)."""
    batch = context.explain(samples, context.preprocess(samples))
    if context.examples is not None:
        context.examples.add(batch)
    rows = prediction_rows(batch)
    guard = BatchGuard(batch)
    for metric in context.metrics:
        for row, record in zip(rows, metric.update(batch), strict=True):
            row.update(record)
        guard.check(batch, metric.name)
    return rows


#: what every metric of a batch reads and none may change
GUARDED = ("inputs", "logits", "pred_classes", "pred_maps", "gt_classes", "gt_maps")


class BatchModifiedError(RuntimeError):
    """A metric changed a tensor of the batch that the metrics after it read."""


class BatchGuard:
    """Copies of a batch's shared tensors, checked after every metric: a metric that writes into the images
    or maps in place (as the incremental deletion chains once did) would make every later metric of the
    batch score other inputs than the method's, with plausible numbers. A run stops instead."""

    def __init__(self, batch: EvalBatch) -> None:
        self.copies = {
            name: (tensor, tensor.clone())
            for name in GUARDED
            if isinstance(tensor := getattr(batch, name), torch.Tensor)
        }

    def check(self, batch: EvalBatch, metric: str) -> None:
        for name, (tensor, copy) in self.copies.items():
            if getattr(batch, name) is tensor and _same(tensor, copy):
                continue
            raise BatchModifiedError(
                f"metric {metric!r} changed the batch's {name} in place, so the metrics after it would score "
                "other inputs: the run stops (a bug in that metric; run the others without it meanwhile)"
            )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other is NaN (degenerate maps stay NaN)."""
    if torch.equal(a, b):  # the common case, one pass; NaN != NaN sends degenerate maps below
        return True
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return False
