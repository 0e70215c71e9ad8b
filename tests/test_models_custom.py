"""``model=custom``: any module through a Hydra ``_target_``, here a tiny CNN defined in this file."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from evalcam.methods import TopK, build_explainer
from evalcam.models import ModelBundle, Preprocess, load_model
from evalcam.models.layers import LayerNotFoundError

TARGET = f"{__name__}.tiny_cnn"


class TinyCNN(nn.Module):
    """conv -> ReLU -> GAP -> fc: a CAM-compatible classifier small enough to build in milliseconds."""

    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def tiny_cnn(width: int = 8, classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(width, classes)


def tiny_bundle() -> ModelBundle:
    return ModelBundle(
        model=tiny_cnn(), name="tiny", target_layer="features.1", preprocess=Preprocess(size=(32, 32))
    )


def not_a_model() -> str:
    return "nope"


def compose_model(*overrides: str) -> dict:
    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=custom", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def build(cfg: dict) -> ModelBundle:
    """As the runner does: name, target_layer, and the non-null params as keyword arguments."""
    params = {k: v for k, v in (cfg.get("params") or {}).items() if v is not None}
    return load_model(cfg["name"], target_layer=cfg.get("target_layer"), **params)


def test_custom_model_from_config():
    cfg = compose_model(
        f"model.params._target_={TARGET}",
        "model.target_layer=features.1",
        "+model.params.width=6",
        "model.params.size=[48,40]",
        "model.params.mean=[0.5,0.5,0.5]",
        "model.params.categories=[a,b,c,d,e]",
        "model.params.classifier=fc",
    )
    bundle = build(cfg)
    assert isinstance(bundle.model, TinyCNN) and bundle.model.fc.in_features == 6  # kwarg reached the target
    assert bundle.target_layer == "features.1" and bundle.classifier == "fc" and bundle.name == "tiny_cnn"
    assert bundle.preprocess.size == (48, 40) and bundle.preprocess.mean == (0.5, 0.5, 0.5)
    assert bundle.preprocess.std == pytest.approx((0.229, 0.224, 0.225))  # default kept
    assert bundle.categories == ["a", "b", "c", "d", "e"]
    # The bundle drives a method end to end: Grad-CAM on the custom layer.
    images = [torch.randint(0, 256, (3, 60, 50), dtype=torch.uint8) for _ in range(2)]
    inputs = bundle.preprocess(images, "cpu")
    assert inputs.shape == (2, 3, 48, 40)
    explanation = build_explainer("gradcam", bundle).explain(inputs, TopK(2))
    assert explanation.maps.shape[:2] == (2, 2) and explanation.maps.shape[-2:] == (48, 40)
    assert explanation.classes.shape == (2, 2)


def test_target_may_return_a_bundle():
    bundle = build(
        compose_model(f"model.params._target_={__name__}.tiny_bundle", "model.target_layer=features.0")
    )
    assert bundle.name == "tiny" and bundle.preprocess.size == (32, 32)
    assert bundle.target_layer == "features.0"  # the config's layer wins over the bundle's default


def test_custom_errors():
    with pytest.raises(ValueError, match="_target_"):
        build(compose_model("model.target_layer=features.1"))  # _target_ left at ???
    with pytest.raises(ValueError, match=r"model\.target_layer"):
        build(compose_model(f"model.params._target_={TARGET}"))  # target_layer left at ???
    with pytest.raises(LayerNotFoundError, match="features"):
        build(compose_model(f"model.params._target_={TARGET}", "model.target_layer=layer9"))
    with pytest.raises(ValueError, match="could not build"):
        build(compose_model("model.params._target_=no_such_module.build", "model.target_layer=x"))
    with pytest.raises(ValueError, match=r"expected nn\.Module"):
        build(compose_model(f"model.params._target_={__name__}.not_a_model", "model.target_layer=x"))
