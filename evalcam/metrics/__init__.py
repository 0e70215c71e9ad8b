"""Metric registry: ``build_metrics({"weak_loc": {...}}, device)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from evalcam.metrics.base import EvalBatch, Metric
from evalcam.metrics.causal import Deletion, Insertion
from evalcam.metrics.confidence import AverageDrop
from evalcam.metrics.faithfulness import OcclusionFaithfulness
from evalcam.metrics.faithfulness_family import FAITHFULNESS_FAMILY
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
    **FAITHFULNESS_FAMILY,
}


# Other names a config may select a metric by (the issue's and the papers' wording). The metric keeps its
# registry name in everything it logs, so ``metrics=[localization]`` still reports ``weak_loc/...``.
ALIASES: dict[str, str] = {"localization": "weak_loc"}


def canonical_name(name: str) -> str:
    """The registry name of a metric selected as ``name`` (itself, or what an alias stands for)."""
    return ALIASES.get(name, name)


def register_metric(name: str) -> Callable[[type[Metric]], type[Metric]]:
    def wrap(cls: type[Metric]) -> type[Metric]:
        METRICS[name] = cls
        return cls

    return wrap


def build_metrics(
    settings: Mapping[str, Mapping[str, Any] | None], device: torch.device | str
) -> list[Metric]:
    unknown = [name for name in settings if canonical_name(name) not in METRICS]
    if unknown:
        names = sorted([*METRICS, *ALIASES])
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(names)}")
    seen: dict[str, str] = {}
    for name in settings:
        # Two selections of one metric would share its state and log keys.
        if canonical_name(name) in seen:
            raise ValueError(
                f"metrics {seen[canonical_name(name)]!r} and {name!r} are the same metric; select it once"
            )
        seen[canonical_name(name)] = name
    return [
        METRICS[canonical_name(name)](device=device, **dict(params or {}))
        for name, params in settings.items()
    ]


__all__ = ["ALIASES", "METRICS", "EvalBatch", "Metric", "build_metrics", "canonical_name", "register_metric"]
