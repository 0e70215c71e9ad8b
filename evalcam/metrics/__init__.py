"""Metric registry: ``build_metrics({"weak_loc": {...}}, device)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from evalcam.metrics.avg_drop import AverageDrop
from evalcam.metrics.base import EvalBatch, Metric
from evalcam.metrics.complexity import Complexity, EffectiveComplexity, Sparseness
from evalcam.metrics.continuity import Continuity
from evalcam.metrics.deletion_insertion import Deletion, Insertion
from evalcam.metrics.emprt import EfficientMPRT
from evalcam.metrics.faithfulness import OcclusionFaithfulness
from evalcam.metrics.faithfulness_correlation import FaithfulnessCorrelation
from evalcam.metrics.faithfulness_estimate import FaithfulnessEstimate
from evalcam.metrics.focus import Focus
from evalcam.metrics.infidelity import Infidelity
from evalcam.metrics.irof import IROF
from evalcam.metrics.local_lipschitz import LocalLipschitz
from evalcam.metrics.mask_localization import (
    AttributionLocalisation,
    MaskAUC,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)
from evalcam.metrics.max_sensitivity import MaxSensitivity
from evalcam.metrics.maxboxacc import MaxBoxAcc
from evalcam.metrics.monotonicity_correlation import MonotonicityCorrelation
from evalcam.metrics.pixel_flipping import PixelFlipping
from evalcam.metrics.pointing import EnergyPointingGame, PointingGame
from evalcam.metrics.random_logit import RandomLogit
from evalcam.metrics.region_perturbation import RegionPerturbation
from evalcam.metrics.relative_stability import (
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)
from evalcam.metrics.road import ROAD
from evalcam.metrics.robustness import AdversarialRobustness
from evalcam.metrics.sanity import CascadingRandomization
from evalcam.metrics.smprt import SmoothMPRT
from evalcam.metrics.sufficiency import Sufficiency
from evalcam.metrics.weak_loc import WeakLocalization
from evalcam.stats.seed import derive_seed

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
    # issue 18: complexity, localisation against masks, Focus
    "sparseness": Sparseness,
    "complexity": Complexity,
    "effective_complexity": EffectiveComplexity,
    "relevance_mass": RelevanceMassAccuracy,
    "relevance_rank": RelevanceRankAccuracy,
    "attribution_localisation": AttributionLocalisation,
    "topk_intersection": TopKIntersection,
    "mask_auc": MaskAUC,
    "focus": Focus,
    # robustness and randomization families (issue 18)
    "max_sensitivity": MaxSensitivity,
    "local_lipschitz": LocalLipschitz,
    "relative_input_stability": RelativeInputStability,
    "relative_output_stability": RelativeOutputStability,
    "relative_representation_stability": RelativeRepresentationStability,
    "continuity": Continuity,
    "emprt": EfficientMPRT,
    "smprt": SmoothMPRT,
    "random_logit": RandomLogit,
    # faithfulness family (issue 18)
    "road": ROAD,
    "irof": IROF,
    "pixel_flipping": PixelFlipping,
    "region_perturbation": RegionPerturbation,
    "faithfulness_correlation": FaithfulnessCorrelation,
    "faithfulness_estimate": FaithfulnessEstimate,
    "monotonicity_correlation": MonotonicityCorrelation,
    "sufficiency": Sufficiency,
    "infidelity": Infidelity,
}


# Other names a config may select a metric by (the issue's and the papers' wording). The metric keeps its
# registry name in everything it logs, so ``metrics=[localization]`` still reports ``weak_loc/...``.
ALIASES: dict[str, str] = {"localization": "weak_loc"}


def canonical_name(name: str) -> str:
    """The registry name of a metric selected as ``name`` (itself, or what an alias stands for)."""
    return ALIASES.get(name, name)


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
    built = []
    for name, params in settings.items():
        kwargs = dict(params or {})
        if "seed" in kwargs and kwargs["seed"] is None:
            # The runner derives null seeds from the run's `seed` first (evalcam.stats.seed); outside a
            # run, the same derivation from the default seed 0.
            kwargs["seed"] = derive_seed(0, name)
        built.append(METRICS[canonical_name(name)](device=device, **kwargs))
    return built


__all__ = ["ALIASES", "METRICS", "EvalBatch", "Metric", "build_metrics", "canonical_name"]
