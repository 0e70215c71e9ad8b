"""Metric API: stateful accumulators in the torchmetrics pattern.

Every state is a tensor on the metric's device that is reduced by summation, so states from several
processes (or from the batches of an interrupted run) merge exactly: :meth:`Metric.merge` adds them (the
runner sums the states of a run's Parquet parts this way). ``update`` returns per-image records that the
runner appends to the run's Parquet table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from evalcam.requirements import Needs
from evalcam.stats.aggregation import Aggregation, Mean

if TYPE_CHECKING:  # field types only: the batch step itself lives in evalcam.pipeline
    from evalcam.data.types import Sample
    from evalcam.methods.base import Explainer
    from evalcam.models.bundle import ModelBundle


@dataclass
class EvalBatch:
    """Everything a metric may look at for one batch; maps are computed once (:mod:`evalcam.pipeline`)."""

    samples: list[Sample]
    inputs: torch.Tensor  # preprocessed network inputs [B, 3, H, W]
    logits: torch.Tensor  # [B, num_classes]
    pred_classes: torch.Tensor  # [B, K] top-K predicted classes, best first
    pred_maps: torch.Tensor  # [B, K, h, w] maps of those classes at feature resolution
    explainer: Explainer
    bundle: ModelBundle
    # Maps of the ground-truth classes, when a metric asked for them (pointing game): [B, L, h, w],
    # classes [B, L] padded with -1 where an image has fewer than L labels.
    gt_classes: torch.Tensor | None = None
    gt_maps: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self, start: int, stop: int) -> EvalBatch:
        """Images ``start .. stop-1``: a smaller batch, e.g. to check that a metric ignores batching."""
        part = slice(start, stop)

        def cut(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[part]

        return replace(
            self,
            samples=self.samples[part],
            inputs=self.inputs[part],
            logits=self.logits[part],
            pred_classes=self.pred_classes[part],
            pred_maps=self.pred_maps[part],
            gt_classes=cut(self.gt_classes),
            gt_maps=cut(self.gt_maps),
        )


class Metric:
    """Base accumulator. Subclasses declare states in ``__init__`` via :meth:`add_state`."""

    name = "metric"
    #: maps of the top-k predicted classes this metric needs (0: none)
    pred_topk = 0
    #: whether this metric needs maps of the ground-truth classes
    needs_gt_maps = False
    #: what the metric reads from the dataset and the model (checked before a run starts)
    needs: ClassVar[Needs] = Needs()
    #: direction of every logged key that has one (counts have none): used by rankings and reports
    higher_is_better: ClassVar[dict[str, bool]] = {}
    #: whether an image's value depends on the other images of its batch (Focus's mosaics, sufficiency's
    #: neighbours). The runner then never splits a batch (:mod:`evalcam.pacing`) and resumes only at the
    #: batch boundaries an uninterrupted run has, so a resumed or paced run gives the same records.
    batch_dependent: ClassVar[bool] = False
    #: keys with a direction that ``compute`` leaves out (rather than NaN) when nothing was measured
    omitted_when_empty: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._defaults: dict[str, torch.Tensor] = {}

    def add_state(self, name: str, default: torch.Tensor) -> None:
        self._defaults[name] = default.clone()
        setattr(self, name, default.clone().to(self.device))

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, default.clone().to(self.device))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        """Accumulate one batch; return one record per sample (same order as ``batch.samples``)."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def notes(self, values: Mapping[str, float]) -> dict[str, str]:
        """Why a logged value has no number: ``{key: one-line reason}`` for every key with a direction
        that ``compute`` gave as NaN or left out (nothing was scored). The runner writes them to
        ``summary.json`` (``notes``) and to the MLflow run's tags."""
        empty = [
            key
            for key in self.higher_is_better
            if (key in values and math.isnan(values[key]))
            or (key in self.omitted_when_empty and key not in values)
        ]
        return {key: self.empty_reason(values) for key in empty}

    def empty_reason(self, values: Mapping[str, float]) -> str:
        """The reason :meth:`notes` gives; subclasses that skip images say why they skipped them."""
        counts = ", ".join(
            f"{key}={value:g}"
            for key, value in values.items()
            if key not in self.higher_is_better and not math.isnan(value)
        )
        return "nothing was scored for this value" + (f" ({counts})" if counts else "")

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        """How each logged key is re-estimated from the per-image records (bootstrap intervals, paired
        tests, rankings; see :mod:`evalcam.stats.aggregation`). Default: the mean over images of the
        column ``<name>.<key>`` for every key with a direction; override for other aggregations."""
        return {k: Mean(self.column(k)) for k in keys if k in self.higher_is_better}

    def record(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
        """One image's record: every value keyed ``<name>.<key>``, the column the statistics resample."""
        return {self.column(key): value for key, value in {**(values or {}), **more}.items()}

    def column(self, key: str) -> str:
        """The per-image column of ``key``: ``<name>.<key>``."""
        return f"{self.name}.{key}"

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().clone() for name in self._defaults}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self._defaults:
            setattr(self, name, state[name].to(self.device).clone())

    def merge(self, other: Metric | dict[str, torch.Tensor]) -> None:
        """Add another accumulator's state (another process, another shard) into this one."""
        state = other.state_dict() if isinstance(other, Metric) else other
        for name in self._defaults:
            setattr(self, name, getattr(self, name) + state[name].to(self.device))


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    """num / den as a float, NaN only when nothing at all was counted."""
    den_value = float(den)
    return float(num) / den_value if den_value > 0 else float("nan")
