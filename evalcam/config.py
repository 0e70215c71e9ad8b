"""The run configuration composed outside ``evalcam run``: ``figure``, ``layers`` and the benchmark read
the same ``conf/`` tree (defaults, environment variables, overrides) as a run does."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig


def compose_run_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/config.yaml`` with Hydra ``overrides`` (``["dataset=voc2007", "dataset.limit=4"]``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or an earlier compose
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
