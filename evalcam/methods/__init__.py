"""Method registry: ``build_explainer("gradcam", bundle)`` -> an :class:`Explainer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evalcam.methods.base import CAMExplainer, Explainer, Explanation, TopK, capture_activations
from evalcam.methods.baselines import CenterBaseline, RandomBaseline
from evalcam.methods.gradcam import GradCAM
from evalcam.models.bundle import ModelBundle

# name -> (class, family, paper). Family and paper become MLflow tags.
METHODS: dict[str, tuple[type[Explainer], str, str]] = {
    "gradcam": (GradCAM, "gradient-cam", "Selvaraju et al. 2017, Grad-CAM"),
    "center": (CenterBaseline, "baseline", "centre-bias baseline"),
    "random": (RandomBaseline, "baseline", "random-map baseline"),
}

ExplainerFactory = Callable[..., Explainer]


def register_method(name: str, family: str, paper: str) -> Callable[[type[Explainer]], type[Explainer]]:
    def wrap(cls: type[Explainer]) -> type[Explainer]:
        METHODS[name] = (cls, family, paper)
        return cls

    return wrap


def build_explainer(name: str, bundle: ModelBundle, **params: Any) -> Explainer:
    """Instantiate method ``name`` on ``bundle``'s model and default target layer."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name][0]
    if issubclass(cls, CAMExplainer):
        layer = params.pop("target_layer", None) or bundle.target_layer
        return cls(bundle.model, layer, **params)
    return cls(bundle.model, **params)


__all__ = [
    "METHODS",
    "CAMExplainer",
    "Explainer",
    "Explanation",
    "TopK",
    "build_explainer",
    "capture_activations",
    "register_method",
]
