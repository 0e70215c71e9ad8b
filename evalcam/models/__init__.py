"""Model zoo: every entry returns a :class:`ModelBundle` with weights read from local files only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from evalcam.models.bundle import ModelBundle, Preprocess
from evalcam.models.layers import LayerNotFoundError, resolve_layer

ModelBuilder = Callable[..., ModelBundle]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def wrap(fn: ModelBuilder) -> ModelBuilder:
        MODELS[name] = fn
        return fn

    return wrap


@register_model("efficientnet_lite0")
def _lite0(**kw: Any) -> ModelBundle:
    from evalcam.models.efficientnet_lite import load_efficientnet_lite

    return load_efficientnet_lite(0, **kw)


@register_model("efficientnet_lite1")
def _lite1(**kw: Any) -> ModelBundle:
    from evalcam.models.efficientnet_lite import load_efficientnet_lite

    return load_efficientnet_lite(1, **kw)


@register_model("efficientnet_lite2")
def _lite2(**kw: Any) -> ModelBundle:
    from evalcam.models.efficientnet_lite import load_efficientnet_lite

    return load_efficientnet_lite(2, **kw)


def _register_torchvision() -> None:
    from evalcam.models.torchvision_models import ARCHITECTURES, builder

    for arch in ARCHITECTURES:
        register_model(arch)(builder(arch))


_register_torchvision()


@register_model("custom")
def _custom(**kw: Any) -> ModelBundle:
    from evalcam.models.custom import load_custom

    return load_custom(**kw)


def load_model(name: str, device: str | torch.device = "cpu", target_layer: str | None = None, **kw: Any):
    """Build model ``name`` on ``device`` and check its target layer exists."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    bundle = MODELS[name](**kw)
    if target_layer and target_layer != "???":  # "???": OmegaConf's unset-mandatory marker
        bundle.target_layer = target_layer
    if not bundle.target_layer or bundle.target_layer == "???":
        from evalcam.models.layers import conv_like_layers

        raise ValueError(
            f"model {name!r} has no default target layer: set model.target_layer=NAME "
            f"(e.g. {', '.join(conv_like_layers(bundle.model)[:5])})"
        )
    for layer in str(bundle.target_layer).split(","):
        resolve_layer(bundle.model, layer.strip())
    bundle.model.to(device).eval()
    return bundle


__all__ = ["MODELS", "LayerNotFoundError", "ModelBundle", "Preprocess", "load_model", "register_model"]
