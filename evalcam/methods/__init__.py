"""Method registry: ``build_explainer("gradcam", bundle)`` -> an :class:`Explainer`.

``pgc/<ClassName>`` runs a pytorch-grad-cam class through the same API (:mod:`evalcam.methods.external`),
``captum/<ClassName>`` any Captum attribution class (:mod:`evalcam.methods.captum_methods`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from evalcam.methods.base import (
    CAMExplainer,
    Explainer,
    Explanation,
    TopK,
    capture_activations,
    parse_autocast,
)
from evalcam.methods.baselines import CenterBaseline, RandomBaseline
from evalcam.methods.cam import CAM, EigenCAM
from evalcam.methods.cam_successors import FullGrad, SmoothGradCAMPlusPlus
from evalcam.methods.captum_methods import (
    DeepLift,
    DeepLiftShap,
    ExpectedGradients,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    SmoothGrad,
)
from evalcam.methods.gradcam import (
    CounterfactualGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    GradCAMPlusPlusApprox,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from evalcam.methods.gradients import Backprop, GuidedBackprop, GuidedGradCAM, guided_relus
from evalcam.methods.lrp import LRP
from evalcam.methods.occlusion import Occlusion
from evalcam.methods.perturbation import AblationCAM, ScoreCAM
from evalcam.methods.rise import RISE
from evalcam.models.bundle import ModelBundle

# name -> (class, family, paper). Family and paper become MLflow tags.
METHODS: dict[str, tuple[type[Explainer], str, str]] = {
    "gradcam": (GradCAM, "gradient-cam", "Selvaraju et al. 2017, Grad-CAM"),
    "counterfactual_gradcam": (
        CounterfactualGradCAM,
        "gradient-cam",
        "Selvaraju et al. 2017, Grad-CAM (counterfactual explanations)",
    ),
    "gradcampp": (GradCAMPlusPlus, "gradient-cam", "Chattopadhyay et al. 2018, Grad-CAM++ (exp-score form)"),
    "gradcampp_approx": (
        GradCAMPlusPlusApprox,
        "gradient-cam",
        "Chattopadhyay et al. 2018, Grad-CAM++ (pytorch-grad-cam approximation)",
    ),
    "xgradcam": (XGradCAM, "gradient-cam", "Fu et al. 2020, XGrad-CAM"),
    "hirescam": (HiResCAM, "gradient-cam", "Draelos & Carin 2020, HiResCAM"),
    "layercam": (LayerCAM, "gradient-cam", "Jiang et al. 2021, LayerCAM"),
    "cam": (CAM, "activation-cam", "Zhou et al. 2016, CAM"),
    "eigencam": (EigenCAM, "activation-cam", "Muhammad & Yeasin 2020, Eigen-CAM"),
    "scorecam": (ScoreCAM, "perturbation-cam", "Wang et al. 2020, Score-CAM"),
    "ablationcam": (AblationCAM, "perturbation-cam", "Desai & Ramaswamy 2020, Ablation-CAM"),
    "occlusion": (Occlusion, "perturbation", "Zeiler & Fergus 2014, occlusion sensitivity"),
    "rise": (RISE, "perturbation", "Petsiuk et al. 2018, RISE"),
    "backprop": (Backprop, "input-gradient", "Simonyan et al. 2014, gradient saliency (Backprop)"),
    "guided_backprop": (GuidedBackprop, "input-gradient", "Springenberg et al. 2015, Guided Backpropagation"),
    "guided_gradcam": (GuidedGradCAM, "input-gradient", "Selvaraju et al. 2017, Guided Grad-CAM"),
    "smoothgradcampp": (SmoothGradCAMPlusPlus, "gradient-cam", "Omeiza et al. 2019, Smooth Grad-CAM++"),
    "fullgrad": (FullGrad, "gradient-cam", "Srinivas & Fleuret 2019, FullGrad"),
    "integrated_gradients": (IntegratedGradients, "captum", "Sundararajan et al. 2017, Integrated Gradients"),
    "smoothgrad": (SmoothGrad, "captum", "Smilkov et al. 2017, SmoothGrad"),
    "input_x_gradient": (InputXGradient, "captum", "Shrikumar et al. 2016, Input x Gradient"),
    "deeplift": (DeepLift, "captum", "Shrikumar et al. 2017, DeepLIFT (Rescale)"),
    "deepliftshap": (DeepLiftShap, "captum", "Lundberg & Lee 2017, DeepLIFT SHAP"),
    "expected_gradients": (
        ExpectedGradients,
        "captum",
        "Erion et al. 2021, Expected Gradients (GradientShap)",
    ),
    "kernelshap": (KernelShap, "captum", "Lundberg & Lee 2017, KernelSHAP (SLIC superpixels)"),
    "lime": (Lime, "captum", "Ribeiro et al. 2016, LIME (SLIC superpixels)"),
    "lrp": (LRP, "lrp", "Bach et al. 2015, LRP (zennit composites, Kohlbrenner et al. 2020)"),
    "center": (CenterBaseline, "baseline", "centre-bias baseline"),
    "random": (RandomBaseline, "baseline", "random-map baseline"),
}

ExplainerFactory = Callable[..., Explainer]


def register_method(name: str, family: str, paper: str) -> Callable[[type[Explainer]], type[Explainer]]:
    def wrap(cls: type[Explainer]) -> type[Explainer]:
        METHODS[name] = (cls, family, paper)
        return cls

    return wrap


def method_tags(name: str) -> tuple[str, str]:
    """(family, paper) of a method name, including ``pgc/...`` names (family "external")."""
    if name.startswith("pgc/"):
        return "external", f"pytorch-grad-cam {name[4:]}"
    if name.startswith("captum/"):
        return "external", f"Captum {name[7:]}"
    return METHODS[name][1], METHODS[name][2]


def build_explainer(name: str, bundle: ModelBundle, **params: Any) -> Explainer:
    """Instantiate method ``name`` on ``bundle``'s model, its default target layer and, for methods that
    read the linear head (CAM, Ablation-CAM), its ``classifier``."""
    if name.startswith("pgc/"):
        from evalcam.methods.external import PytorchGradCAM

        layer = params.pop("target_layer", None) or bundle.target_layer
        return PytorchGradCAM(bundle.model, layer, name[4:], **params)
    if name.startswith("captum/"):
        from evalcam.methods.captum_methods import CaptumAttribution

        layer = params.pop("target_layer", None) or bundle.target_layer
        return CaptumAttribution(bundle.model, name[7:], target_layer=layer, **params)
    if name not in METHODS:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}, pgc/<ClassName>, "
            "captum/<ClassName>"
        )
    cls = METHODS[name][0]
    accepted = inspect.signature(cls.__init__).parameters
    if "classifier" in accepted and "classifier" not in params:
        if name == "cam" and not bundle.classifier:
            raise ValueError(
                f"cam needs a GAP+FC model, but {bundle.name} names no classifier "
                f"(ModelBundle.classifier); use gradcam, gradcampp, layercam, scorecam or fullgrad instead"
            )
        params["classifier"] = bundle.classifier
    if "target_layer" in accepted or issubclass(cls, CAMExplainer):
        params["target_layer"] = params.get("target_layer") or bundle.target_layer
    return cls(bundle.model, **params)


__all__ = [
    "METHODS",
    "CAMExplainer",
    "Explainer",
    "Explanation",
    "TopK",
    "build_explainer",
    "capture_activations",
    "guided_relus",
    "method_tags",
    "parse_autocast",
    "register_method",
]
