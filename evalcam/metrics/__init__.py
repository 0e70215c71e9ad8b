"""Metric registry: ``build_metrics({"weak_loc": {...}}, device)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from evalcam.metrics.base import EvalBatch, Metric
from evalcam.metrics.localization import WeakLocalization

METRICS: dict[str, type[Metric]] = {
    "weak_loc": WeakLocalization,
}


def register_metric(name: str):
    def wrap(cls: type[Metric]) -> type[Metric]:
        METRICS[name] = cls
        return cls

    return wrap


def build_metrics(settings: Mapping[str, Mapping[str, Any] | None], device: torch.device | str) -> list[Metric]:
    unknown = [name for name in settings if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(sorted(METRICS))}")
    return [METRICS[name](device=device, **dict(params or {})) for name, params in settings.items()]


__all__ = ["METRICS", "EvalBatch", "Metric", "build_metrics", "register_metric"]
