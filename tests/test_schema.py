"""The structured run config (evalcam.schema): defaults written once, typed keys checked by Hydra, and
the same defaults and checks for a plain dict handed to ``runner.run``."""

from __future__ import annotations

import dataclasses

import pytest
from hydra.errors import ConfigCompositionException

from evalcam.config import compose_run_config
from evalcam.schema import RunConfig, StatsConfig, with_defaults


def test_composed_config_takes_its_defaults_from_the_schema():
    cfg = compose_run_config()
    for f in dataclasses.fields(RunConfig):
        if f.name not in ("method", "model", "dataset", "metrics", "stats"):
            assert cfg[f.name] == getattr(RunConfig, f.name), f.name
    assert dict(cfg.stats) == dataclasses.asdict(StatsConfig())
    assert cfg.model.head is None and cfg.model.name == "efficientnet_lite0"
    assert isinstance(cfg.slow_ratio, float) and cfg.batch_size == 16


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("batchsize=3", "Could not override 'batchsize'"),
        ("stats.bootstap=3", "Could not override 'stats.bootstap'"),
        ("resume=maybe", "Error merging override resume=maybe"),
        ("slow_ratio=fast", "Error merging override slow_ratio=fast"),
    ],
)
def test_hydra_refuses_a_mistyped_key_or_a_wrongly_typed_value(override, expected):
    with pytest.raises(ConfigCompositionException) as err:
        compose_run_config([override])
    assert str(err.value).splitlines()[0].startswith(expected)


def test_a_plain_dict_gets_the_same_defaults_and_checks():
    config = with_defaults({"method": {"name": "center"}, "batch_size": "4", "stats": {"bootstrap": None}})
    assert config["batch_size"] == 4 and config["topk"] == 5 and config["resume"] is True
    assert config["stats"] == {"bootstrap": None, "confidence": 0.95, "seed": None}
    assert config["model"] == {"head": None} and config["method"] == {"name": "center"}
    with pytest.raises(ValueError) as err:
        with_defaults({"batchsize": 4})
    assert str(err.value) == (
        "invalid run config: Key 'batchsize' not in 'RunConfig'; valid keys: batch_size, compile, dataset, "
        "device, experiment, method, metrics, mlflow, model, n_examples, num_workers, output_dir, progress, "
        "resume, seed, slow_ratio, stats, topk, tracking_uri"
    )
    with pytest.raises(ValueError) as err:
        with_defaults({"topk": "x"})
    assert str(err.value).startswith("invalid run config: Value 'x' of type 'str' could not be converted")
    assert "\n" not in str(err.value)


def test_a_composed_model_section_builds_the_model_a_run_would():
    from omegaconf import OmegaConf

    from evalcam.config import load_configured_model

    cfg = compose_run_config(["model=efficientnet_lite0", "model.target_layer=blocks.15"])
    bundle = load_configured_model(OmegaConf.to_container(cfg.model, resolve=True))
    assert bundle.name == "efficientnet_lite0" and bundle.target_layer == "blocks.15"
    from evalcam.models.layers import LayerNotFoundError

    with pytest.raises(LayerNotFoundError, match=r"^layer 'blocks\.99' not found in EfficientNetLite"):
        load_configured_model({"name": "efficientnet_lite0", "target_layer": "blocks.99", "params": {}})
