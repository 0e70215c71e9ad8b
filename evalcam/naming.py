"""Run names that tell two runs apart.

A run is named ``method·model·dataset`` and, in parentheses, whatever else changes its numbers and differs
from a plain run: the dataset's split, ``limit``, ``classes`` and ``subset_seed``; ``model.head``; a
non-default target layer; method or metric parameters that differ from their ``conf/`` defaults; and a
non-zero top-level ``seed``. Sub-seeds derived from that seed (:mod:`evalcam.stats.seed`) are not repeated:
``seed=3`` names them all; one set explicitly to another value is named.
``gradcam·efficientnet_lite0·voc2007 (split=test, limit=50, head=proxy)`` and the same run on all images
are thus two names in one MLflow experiment (``<dataset>/<model>``), which still groups them.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

# Dataset keys that select which images are scored (paths are left out: they say where, not what).
DATASET_KEYS = ("split", "limit", "classes", "subset_seed")
# Metric keys that say where shared results are kept, not what is computed (the default, an interpolation
# of output_dir, differs from every resolved value).
WHERE_KEYS = ("cache_dir",)


@cache
def group_defaults(group: str, option: str) -> dict[str, Any]:
    """The ``conf/<group>/<option>.yaml`` file as a dict; empty when there is no such file."""
    try:
        text = resources.files("evalcam.conf").joinpath(group, f"{option}.yaml").read_text()
    except (FileNotFoundError, OSError, ModuleNotFoundError):
        return {}
    return yaml.safe_load(text) or {}


def _changed(values: dict[str, Any] | None, defaults: dict[str, Any] | None) -> dict[str, Any]:
    values, defaults = values or {}, defaults or {}
    return {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _derived(key: str, value: Any, seed: Any, purpose: str) -> bool:
    """Whether ``value`` of parameter ``key`` is the sub-seed the run's ``seed`` gives ``purpose``."""
    from evalcam.stats.seed import derive_seed

    return key == "seed" and isinstance(seed, int) and value == derive_seed(seed, purpose)


def run_qualifiers(config: dict[str, Any]) -> list[str]:
    """``key=value`` items that set this run apart from a default run of the same method, model, dataset."""
    items: list[str] = []
    dataset = config.get("dataset") or {}
    for key in DATASET_KEYS:
        if dataset.get(key) is not None:
            derived = key == "subset_seed" and _derived("seed", dataset[key], config.get("seed"), "subset")
            items.append(f"{key}={'auto' if derived else _text(dataset[key])}")
    model = config.get("model") or {}
    if model.get("head"):
        items.append(f"head={model['head']}")
    model_defaults = group_defaults("model", str(model.get("name")))
    if model_defaults and model.get("target_layer") != model_defaults.get("target_layer"):
        items.append(f"layer={_text(model.get('target_layer'))}")
    seed = config.get("seed")
    method = config.get("method") or {}
    method_defaults = group_defaults("method", str(method.get("name")))
    if method_defaults:
        for key, value in _changed(method.get("params"), method_defaults.get("params")).items():
            if not _derived(key, value, seed, "method"):
                items.append(f"{key}={_text(value)}")
    for metric, params in (config.get("metrics") or {}).items():
        for key, value in _changed(params, group_defaults("metrics", str(metric))).items():
            if key not in WHERE_KEYS and not _derived(key, value, seed, str(metric)):
                items.append(f"{metric}.{key}={_text(value)}")
    if seed not in (None, 0):
        items.append(f"seed={seed}")
    return items


def run_name(config: dict[str, Any]) -> str:
    """``method·model·dataset``, then ``(k=v, ...)`` from :func:`run_qualifiers` when there are any."""
    base = "·".join((config["method"]["name"], config["model"]["name"], config["dataset"]["name"]))
    extra = run_qualifiers(config)
    return f"{base} ({', '.join(extra)})" if extra else base
