"""Method registry: ``build_explainer("gradcam", bundle)`` -> an :class:`Explainer`.

``pgc/<ClassName>`` runs a pytorch-grad-cam class through the same API (:mod:`evalcam.methods.external`),
``captum/<ClassName>`` any Captum attribution class (:mod:`evalcam.methods.captum_methods`).
"""

from __future__ import annotations

import inspect
from typing import Any

from evalcam.methods.attention import AttentionRollout, TransformerAttribution
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
from evalcam.methods.record import MethodRecord
from evalcam.methods.rise import RISE
from evalcam.methods.score_ablation import AblationCAM, ScoreCAM
from evalcam.models.bundle import ModelBundle

# The built-in methods. Family and paper become MLflow tags; cost and peers drive the benchmark.
METHODS: dict[str, MethodRecord] = {
    "gradcam": MethodRecord(
        GradCAM,
        "gradient-cam",
        "Selvaraju et al. 2017, Grad-CAM",
        "gradient",
        (("pgc", "GradCAM"), ("captum", "LayerGradCam"), ("torchcam", "GradCAM")),
    ),
    "counterfactual_gradcam": MethodRecord(
        CounterfactualGradCAM,
        "gradient-cam",
        "Selvaraju et al. 2017, Grad-CAM (counterfactual explanations)",
        "gradient",
    ),
    "gradcampp": MethodRecord(
        GradCAMPlusPlus,
        "gradient-cam",
        "Chattopadhyay et al. 2018, Grad-CAM++ (exp-score form)",
        "gradient",
        (("pgc", "GradCAMPlusPlus"), ("torchcam", "GradCAMpp")),
    ),
    "gradcampp_approx": MethodRecord(
        GradCAMPlusPlusApprox,
        "gradient-cam",
        "Chattopadhyay et al. 2018, Grad-CAM++ (pytorch-grad-cam approximation)",
        "gradient",
        (("pgc", "GradCAMPlusPlus"), ("torchcam", "GradCAMpp")),
    ),
    "xgradcam": MethodRecord(
        XGradCAM,
        "gradient-cam",
        "Fu et al. 2020, XGrad-CAM",
        "gradient",
        (("pgc", "XGradCAM"), ("torchcam", "XGradCAM")),
    ),
    "hirescam": MethodRecord(
        HiResCAM, "gradient-cam", "Draelos & Carin 2020, HiResCAM", "gradient", (("pgc", "HiResCAM"),)
    ),
    "layercam": MethodRecord(
        LayerCAM,
        "gradient-cam",
        "Jiang et al. 2021, LayerCAM",
        "gradient",
        (("pgc", "LayerCAM"), ("torchcam", "LayerCAM")),
    ),
    "cam": MethodRecord(CAM, "activation-cam", "Zhou et al. 2016, CAM", "forward", (("torchcam", "CAM"),)),
    "eigencam": MethodRecord(
        EigenCAM, "activation-cam", "Muhammad & Yeasin 2020, Eigen-CAM", "forward", (("pgc", "EigenCAM"),)
    ),
    "scorecam": MethodRecord(
        ScoreCAM,
        "perturbation-cam",
        "Wang et al. 2020, Score-CAM",
        "per_channel",
        (("pgc", "ScoreCAM"), ("torchcam", "ScoreCAM")),
    ),
    "ablationcam": MethodRecord(
        AblationCAM,
        "perturbation-cam",
        "Desai & Ramaswamy 2020, Ablation-CAM",
        "per_channel",
        (("pgc", "AblationCAM"),),
    ),
    "occlusion": MethodRecord(
        Occlusion,
        "perturbation",
        "Zeiler & Fergus 2014, occlusion sensitivity",
        "perturbation",
        (("captum", "Occlusion"),),
    ),
    "rise": MethodRecord(RISE, "perturbation", "Petsiuk et al. 2018, RISE", "perturbation"),
    "backprop": MethodRecord(
        Backprop, "input-gradient", "Simonyan et al. 2014, gradient saliency (Backprop)", "gradient"
    ),
    "guided_backprop": MethodRecord(
        GuidedBackprop,
        "input-gradient",
        "Springenberg et al. 2015, Guided Backpropagation",
        "gradient",
        (("captum", "GuidedBackprop"), ("pgc", "GuidedBackpropReLUModel")),
    ),
    "guided_gradcam": MethodRecord(
        GuidedGradCAM,
        "input-gradient",
        "Selvaraju et al. 2017, Guided Grad-CAM",
        "gradient",
        (("captum", "GuidedGradCam"),),
    ),
    "attention_rollout": MethodRecord(
        AttentionRollout, "attention", "Abnar & Zuidema 2020, attention rollout", "forward"
    ),
    "transformer_attribution": MethodRecord(
        TransformerAttribution,
        "attention",
        "Chefer et al. 2021, transformer attribution (gradient x attention rollout)",
        "gradient",
    ),
    "smoothgradcampp": MethodRecord(
        SmoothGradCAMPlusPlus,
        "gradient-cam",
        "Omeiza et al. 2019, Smooth Grad-CAM++",
        "perturbation",
        (("torchcam", "SmoothGradCAMpp"),),
    ),
    "fullgrad": MethodRecord(
        FullGrad, "gradient-cam", "Srinivas & Fleuret 2019, FullGrad", "gradient", (("pgc", "FullGrad"),)
    ),
    "integrated_gradients": MethodRecord(
        IntegratedGradients, "captum", "Sundararajan et al. 2017, Integrated Gradients", "perturbation"
    ),
    "smoothgrad": MethodRecord(SmoothGrad, "captum", "Smilkov et al. 2017, SmoothGrad", "perturbation"),
    "input_x_gradient": MethodRecord(
        InputXGradient, "captum", "Shrikumar et al. 2016, Input x Gradient", "gradient"
    ),
    "deeplift": MethodRecord(DeepLift, "captum", "Shrikumar et al. 2017, DeepLIFT (Rescale)", "gradient"),
    "deepliftshap": MethodRecord(
        DeepLiftShap, "captum", "Lundberg & Lee 2017, DeepLIFT SHAP", "perturbation"
    ),
    "expected_gradients": MethodRecord(
        ExpectedGradients, "captum", "Erion et al. 2021, Expected Gradients (GradientShap)", "perturbation"
    ),
    "kernelshap": MethodRecord(
        KernelShap, "captum", "Lundberg & Lee 2017, KernelSHAP (SLIC superpixels)", "perturbation"
    ),
    "lime": MethodRecord(Lime, "captum", "Ribeiro et al. 2016, LIME (SLIC superpixels)", "perturbation"),
    "lrp": MethodRecord(
        LRP, "lrp", "Bach et al. 2015, LRP (zennit composites, Kohlbrenner et al. 2020)", "gradient"
    ),
    "center": MethodRecord(CenterBaseline, "baseline", "centre-bias baseline", "free"),
    "random": MethodRecord(RandomBaseline, "baseline", "random-map baseline", "free"),
}


def method_tags(name: str) -> tuple[str, str]:
    """(family, paper) of a method name, including ``pgc/...`` names (family "external")."""
    if name.startswith("pgc/"):
        return "external", f"pytorch-grad-cam {name[4:]}"
    if name.startswith("captum/"):
        return "external", f"Captum {name[7:]}"
    record = METHODS[name]
    return record.family, record.paper


def build_explainer(name: str, bundle: ModelBundle, **params: Any) -> Explainer:
    """Instantiate method ``name`` on ``bundle``'s model, its default target layer and, for methods that
    read the linear head (CAM, Ablation-CAM), its ``classifier``.

    The explainer keeps ``(name, params)`` as :attr:`Explainer.recipe`, so the randomization metrics
    (:mod:`evalcam.metrics.sanity`, :mod:`evalcam.metrics.randomization`) rebuild the same method on a
    randomized copy of the model instead of patching references into the original one."""
    explainer = _instantiate(name, bundle, dict(params))
    explainer.recipe = (name, dict(params))
    return explainer


def _instantiate(name: str, bundle: ModelBundle, params: dict[str, Any]) -> Explainer:
    if name.startswith("pgc/"):
        from evalcam.methods.external import PytorchGradCAM

        layer = params.pop("target_layer", None) or bundle.target_layer
        params.setdefault("reshape", bundle.reshape)
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
    cls = METHODS[name].cls
    if "seed" in params and params["seed"] is None:
        # The runner derives a null seed from the run's `seed` (evalcam.stats.seed); outside a run, the
        # same derivation from the default seed 0.
        from evalcam.stats.seed import derive_seed

        params["seed"] = derive_seed(0, "method")
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
    if "reshape" in accepted and "reshape" not in params:
        params["reshape"] = bundle.reshape  # token layout of transformers (ViT, Swin)
    return cls(bundle.model, **params)


__all__ = [
    "METHODS",
    "CAMExplainer",
    "Explainer",
    "Explanation",
    "MethodRecord",
    "TopK",
    "build_explainer",
    "capture_activations",
    "guided_relus",
    "method_tags",
    "parse_autocast",
]
