"""Peer libraries timed against evalcam: pytorch-grad-cam, Captum and TorchCAM, each doing the same job
(one map per image for fixed target classes). Which peers a method has is part of its
:class:`~evalcam.methods.record.MethodRecord`."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from evalcam.bench.entries import Entry
from evalcam.methods import METHODS
from evalcam.models.bundle import ModelBundle
from evalcam.models.layers import resolve_layer


def _pgc_entry(ours: str, cls_name: str, model: nn.Module, layer_name: str) -> Entry:
    def setup():
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        _silence_pgc_progress()
        cam = getattr(pytorch_grad_cam, cls_name)(
            model=model, target_layers=[resolve_layer(model, layer_name)]
        )

        def call(x, classes):
            # Its API takes one target object per image (microseconds to build; timed with the call).
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes.tolist()])

        return call, cam.activations_and_grads.release

    return Entry(
        f"pytorch-grad-cam:{cls_name}", "pytorch-grad-cam", setup, ours=ours, note="maps resized on host"
    )


def _pgc_guided(ours: str, model: nn.Module) -> Entry:
    def setup():
        from pytorch_grad_cam import GuidedBackpropReLUModel

        # It swaps the model's ReLU modules in place and puts back new ones: run it on a copy.
        guided = GuidedBackpropReLUModel(copy.deepcopy(model), device=next(model.parameters()).device)

        def call(x, classes):
            # One image per call is its API.
            return [guided(x[i : i + 1], target_category=int(c)) for i, c in enumerate(classes.tolist())]

        return call, lambda: None

    return Entry(
        "pytorch-grad-cam:GuidedBackpropReLUModel", "pytorch-grad-cam", setup, ours=ours, note="per image"
    )


def _captum_entry(ours: str, cls_name: str, model: nn.Module, layer_name: str | None) -> Entry:
    def setup():
        import captum.attr

        cls = getattr(captum.attr, cls_name)
        method = cls(model) if layer_name is None else cls(model, resolve_layer(model, layer_name))
        kwargs: dict[str, Any] = {"relu_attributions": True} if cls_name == "LayerGradCam" else {}
        if cls_name == "Occlusion":
            # evalcam's defaults (conf/method/occlusion.yaml); Captum has no border-aligned last window.
            kwargs = {
                "sliding_window_shapes": (3, 45, 45),
                "strides": (3, 15, 15),
                "baselines": 0.0,
                "perturbations_per_eval": 64,
            }

        def call(x, classes):
            return method.attribute(x, target=classes, **kwargs)

        return call, lambda: None

    note, comparable = "", True
    if cls_name in ("GuidedBackprop", "GuidedGradCam"):
        # Captum guides ``nn.ReLU`` modules only; ReLU6 (MobileNet/EfficientNet-Lite) is not a subclass, so
        # on such models its "guided" gradient is the plain gradient and cheaper for that reason alone.
        unguided = sum(isinstance(m, nn.ReLU6) for m in model.modules())
        if unguided:
            note = f"not guided here: Captum skips the model's {unguided} ReLU6 (plain gradient)"
            comparable = False
    if cls_name == "Occlusion":
        note = "no border-aligned last row/column: fewer windows per image than evalcam"
    return Entry(f"captum:{cls_name}", "captum", setup, ours=ours, note=note, comparable=comparable)


def _torchcam_entry(ours: str, cls_name: str, model: nn.Module, layer_name: str, **kw: Any) -> Entry:
    def setup():
        import torchcam.methods
        from torchcam.methods.gradient import _GradCAM

        extractor = getattr(torchcam.methods, cls_name)(model, target_layer=layer_name, **kw)
        needs_grad = isinstance(extractor, _GradCAM)

        def call(x, classes):
            with torch.set_grad_enabled(needs_grad):
                scores = model(x)
            return extractor(class_idx=classes.tolist(), scores=scores)

        return call, extractor.remove_hooks

    return Entry(f"torchcam:{cls_name}", "torchcam", setup, ours=ours)


def available_libraries() -> dict[str, str | None]:
    """Peer library -> None when importable, else why not."""
    status: dict[str, str | None] = {}
    for key, module in (
        ("pgc", "pytorch_grad_cam"),
        ("captum", "captum.attr"),
        ("torchcam", "torchcam.methods"),
    ):
        try:
            __import__(module)
            status[key] = None
        except ImportError as err:
            status[key] = f"{module} not installed ({err})"
    return status


def peer_entries(ours: str, bundle: ModelBundle, libraries: dict[str, str | None]) -> list[Entry]:
    entries = []
    model, layer = bundle.model, str(bundle.target_layer)
    record = METHODS.get(ours)
    for lib, cls_name in record.peers if record else ():
        if libraries.get(lib) is not None:
            continue
        if lib == "pgc":
            if cls_name == "GuidedBackpropReLUModel":
                entries.append(_pgc_guided(ours, model))
            else:
                entries.append(_pgc_entry(ours, cls_name, model, layer))
        elif lib == "captum":
            entries.append(
                _captum_entry(
                    ours, cls_name, model, None if cls_name in ("GuidedBackprop", "Occlusion") else layer
                )
            )
        elif lib == "torchcam":
            kw: dict[str, Any] = {}
            if cls_name == "CAM":
                if not bundle.classifier:
                    continue
                kw["fc_layer"] = bundle.classifier
            entries.append(_torchcam_entry(ours, cls_name, model, layer, **kw))
    return entries


def _silence_pgc_progress() -> None:
    """pytorch-grad-cam's ScoreCAM/AblationCAM draw a tqdm bar per image; the bars would bury the table."""
    import pytorch_grad_cam.ablation_cam as ablation
    import pytorch_grad_cam.score_cam as score

    class _Quiet:
        @staticmethod
        def tqdm(iterable, *args, **kwargs):
            return iterable

    score.tqdm = _Quiet  # type: ignore[assignment]
    if hasattr(ablation, "tqdm"):
        ablation.tqdm = _Quiet  # type: ignore[assignment]
