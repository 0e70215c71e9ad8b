"""Metric registry: ``build_metrics({"weak_loc": {...}}, device)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from evalcam.metrics.base import EvalBatch, Metric
from evalcam.metrics.causal import Deletion, Insertion
from evalcam.metrics.confidence import AverageDrop
from evalcam.metrics.faithfulness import OcclusionFaithfulness
from evalcam.metrics.localization import WeakLocalization
from evalcam.metrics.maxboxacc import MaxBoxAcc
from evalcam.metrics.pointing import EnergyPointingGame, PointingGame
from evalcam.metrics.robustness import AdversarialRobustness
from evalcam.metrics.sanity import CascadingRandomization

METRICS: dict[str, type[Metric]] = {
    "weak_loc": WeakLocalization,
    "maxboxacc": MaxBoxAcc,
    "pointing": PointingGame,
    "energy_pointing": EnergyPointingGame,
    "faithfulness": OcclusionFaithfulness,
    "deletion": Deletion,
    "insertion": Insertion,
    "avg_drop": AverageDrop,
    "robustness": AdversarialRobustness,
    "sanity": CascadingRandomization,
}


def register_metric(name: str):
    def wrap(cls: type[Metric]) -> type[Metric]:
        METRICS[name] = cls
        return cls

    return wrap


def build_metrics(
    settings: Mapping[str, Mapping[str, Any] | None], device: torch.device | str
) -> list[Metric]:
    unknown = [name for name in settings if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(sorted(METRICS))}")
    return [METRICS[name](device=device, **dict(params or {})) for name, params in settings.items()]


__all__ = ["METRICS", "EvalBatch", "Metric", "build_metrics", "register_metric"]
