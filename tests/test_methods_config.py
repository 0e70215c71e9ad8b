"""Method configs: one yaml per registered method, each buildable with its own params, and the pgc/
route through Hydra."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from evalcam.methods import METHODS, build_explainer, method_tags
from evalcam.models.bundle import ModelBundle, Preprocess

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(
        model=_Net().eval(),
        name="net",
        target_layer="features",
        preprocess=Preprocess((8, 8)),
        classifier="fc",
    )


def _toy_vit() -> ModelBundle:
    from evalcam.models.deit import deit

    with pytest.warns(UserWarning, match="randomly initialised"):
        return deit(
            image_size=8, patch_size=2, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
        )


def _configs() -> dict[str, dict]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(CONF.glob("*.yaml"))}


def test_every_registered_method_has_a_config_named_after_it():
    configs = _configs()
    for name in METHODS:
        assert name in configs, f"conf/method/{name}.yaml missing"
        assert configs[name]["name"] == name
    assert configs["pgc"]["name"].startswith("pgc/")


@pytest.mark.parametrize("stem", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_config_builds_and_explains(stem):
    if stem == "pgc":
        pytest.importorskip("pytorch_grad_cam")
    config = _configs()[stem]
    bundle = _bundle()
    if config["name"] in METHODS and not METHODS[config["name"]].cls.applies_to(bundle.model):
        bundle = _toy_vit()  # attention methods need attention layers
    explainer = build_explainer(config["name"], bundle, **dict(config.get("params") or {}))
    maps = explainer(torch.randn(2, 3, 8, 8), torch.tensor([0, 2]))
    assert maps.shape[0] == 2 and torch.isfinite(maps).all()
    family, paper = method_tags(config["name"])
    assert family and (paper or family == "baseline")


def test_hydra_selects_any_pytorch_grad_cam_class_through_method_name():
    pytest.importorskip("pytorch_grad_cam")
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=pgc", "method.name=pgc/EigenCAM"])
    method = OmegaConf.to_container(cfg, resolve=True)["method"]
    assert method["name"] == "pgc/EigenCAM"
    explainer = build_explainer(method["name"], _bundle(), **method["params"])
    assert explainer.name == "pgc/EigenCAM"
    assert method_tags(method["name"])[0] == "external"
    assert explainer(torch.randn(1, 3, 8, 8), torch.tensor([1])).shape == (1, 8, 8)


def test_config_params_repeat_the_method_record_defaults():
    """conf/method/<name>.yaml and the class defaults are the same facts; the record reads the class."""
    configs = _configs()
    for name, record in METHODS.items():
        params = dict(configs[name].get("params") or {})
        defaults = record.default_params
        for key, value in params.items():
            if key == "seed" and value is None:
                continue  # null: derived from the run's seed (evalcam.stats.seed), not a class default
            assert key in defaults, f"conf/method/{name}.yaml sets {key}, which {record.cls.__name__} lacks"
            default = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
            assert default == value, f"{name}.{key}: yaml {value!r} != class default {defaults[key]!r}"
