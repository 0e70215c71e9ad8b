"""The run's settings as a Hydra structured config: every top-level key of a run, its type and its default.

``conf/config.yaml`` puts :class:`RunConfig` (registered as ``evalcam_run`` in Hydra's ConfigStore) first
in its defaults list, so a composed config is typed: a mistyped key (``batchsize=8``) or a value of the
wrong type (``batch_size=x``, ``resume=maybe``) fails with Hydra's own message, and each default is
written once, here. ``method``, ``model``, ``dataset`` and ``metrics`` come from their config groups
(``conf/<group>/*.yaml``), whose keys differ by option, so they are left untyped.

:func:`with_defaults` fills a plain dict (``runner.run(dict)`` called directly, as the tests do) from
the same defaults, with the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

CONFIG_NAME = "evalcam_run"


@dataclass
class StatsConfig:
    #: percentile-bootstrap resamples of the images per run (null or 0: no intervals)
    bootstrap: int | None = 1000
    confidence: float = 0.95
    #: null: derived from the run's ``seed`` (see evalcam.stats.seed)
    seed: int | None = None


@dataclass
class RunConfig:
    method: Any = None
    #: ``model.head``: null is the model's own classifier; ``proxy`` reads an ImageNet head in the
    #: dataset's VOC/COCO classes (evalcam.models.proxy_heads)
    model: Any = field(default_factory=lambda: {"head": None})
    dataset: Any = None
    metrics: Any = None
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    batch_size: int = 16
    num_workers: int = 0  # DataLoader workers that decode images
    topk: int = 5  # maps are computed for the top-k predicted classes
    output_dir: str = "evalcam_runs"  # per-run folders: per-image Parquet parts (resume), tables, figures
    resume: bool = True
    n_examples: int = 8  # images in the example grid logged with the run
    progress: bool = True
    #: a set-up costing at least this many forwards per image gets an estimate and is saved image by image
    slow_ratio: float = 50.0
    #: torch.compile the perturbation metrics' chunked forwards (a one-off compile per model, ~40 s for Lite0
    #: on the CPU, cached on disk; then ~1.5x per forward there); same numbers up to float round-off
    compile: bool = False
    mlflow: bool = True
    tracking_uri: str | None = None  # null: MLflow's default store (or $MLFLOW_TRACKING_URI)
    experiment: str | None = None  # null: "<dataset>/<model>"
    #: the one seed: RISE masks, random baseline, PGD starts, subset draws, bootstrap
    seed: int = 0
    stats: StatsConfig = field(default_factory=StatsConfig)


def register() -> None:
    """Put :class:`RunConfig` in Hydra's ConfigStore (idempotent), before any compose of ``conf/``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=CONFIG_NAME, node=RunConfig)


def top_level_keys() -> tuple[str, ...]:
    """Every key a run config has at its top level."""
    return tuple(sorted(f.name for f in fields(RunConfig)))


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` on top of :class:`RunConfig`'s defaults, as a plain dict; an unknown top-level or
    ``stats`` key, or a value of the wrong type, raises a one-line ValueError naming it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), config)
    except OmegaConfBaseException as err:
        hint = f"; valid keys: {', '.join(top_level_keys())}" if "not in 'RunConfig'" in str(err) else ""
        raise ValueError(f"invalid run config: {str(err).splitlines()[0]}{hint}") from None
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]
