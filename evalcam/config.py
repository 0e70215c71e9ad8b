"""The run configuration composed outside ``evalcam run``: ``figure``, ``layers`` and the benchmark read
the same ``conf/`` tree (the structured defaults of :mod:`evalcam.schema`, the group files, environment
variables, overrides) as a run does, and build the model from its ``model`` section the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import torch

    from evalcam.models.bundle import ModelBundle


def compose_run_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/config.yaml`` with Hydra ``overrides`` (``["dataset=voc2007", "dataset.limit=4"]``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from evalcam.schema import register

    register()  # importing evalcam.conf does it too; explicit for a Hydra app that composed before
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or an earlier compose
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def load_configured_model(model: Mapping[str, Any], device: torch.device | str = "cpu") -> ModelBundle:
    """The model a run's ``model`` section describes: ``name``, ``target_layer``, ``params`` (null
    entries dropped) and ``weights`` (``model.weights=PATH|TAG``, the documented spelling)."""
    from evalcam.models import load_model

    params = {k: v for k, v in (model.get("params") or {}).items() if k != "name" and v is not None}
    if model.get("weights") is not None:
        params["weights"] = model["weights"]
    return load_model(model["name"], device=device, target_layer=model.get("target_layer"), **params)
