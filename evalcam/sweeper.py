"""The ``run -m`` sweeper: Hydra's basic sweeper, composing each sweep point's config once instead of twice.

Hydra's basic sweeper composes every job of a batch to validate it (a bad override fails before any job
runs), throws those configs away, and its launcher composes each job again just before running it: two
compositions per point (~0.06 s CPU each for evalcam's config tree). :class:`ComposeOnceSweeper` keeps the
validated configs and hands each one to the launcher when it asks for the same job, so validation, its
error messages and the launched configs are Hydra's own. Selected in ``conf/config.yaml``
(``hydra/sweeper: evalcam``); ``hydra/sweeper=basic`` restores Hydra's.

Reuse is exact: a sweep config depends only on the master config, the overrides, the config files and
the working directory (all unchanged between validation and launch; Hydra restores the working directory
and environment after each job). Each kept config is handed out at most once, because the launcher
writes the job's number and output folder into it. A launcher that pickles itself to run jobs elsewhere
(submitit) carries no kept configs: its jobs compose as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ValidatedConfigs:
    """A Hydra config loader that hands out the config it composed for a job's validation once more,
    for the launch of that job; every other call goes to the loader it wraps."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        kept = self.kept.pop(key, None)
        if kept is not None:
            return kept
        return self.loader.load_sweep_config(master_config=master_config, sweep_overrides=sweep_overrides)

    def validate(self, master_config: DictConfig, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of ``batch`` (raising Hydra's error for one that does not compose) and keep
        the configs for the launch."""
        self.kept.clear()  # a batch the launcher did not run in full (an error) leaves nothing behind
        for overrides in batch:
            key = (id(master_config), tuple(overrides))
            self.kept[key] = self.loader.load_sweep_config(
                master_config=master_config, sweep_overrides=list(overrides)
            )

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "kept"):  # not set yet (unpickling): no recursion through self.loader
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with a launcher that runs jobs in other processes: they compose their own config.
        return {"loader": self.loader, "kept": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class ComposeOnceSweeper(BasicSweeper):
    """:class:`hydra._internal.core_plugins.basic_sweeper.BasicSweeper` whose launcher reuses the configs
    composed to validate each batch (see the module doc)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        loader = ValidatedConfigs(hydra_context.config_loader)
        shared = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)  # type: ignore[arg-type]
        super().setup(hydra_context=shared, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        assert isinstance(loader, ValidatedConfigs)
        loader.validate(self.config, batch)
