"""Any user model through a Hydra ``_target_`` (``model=custom``).

A config such as::

    name: custom
    target_layer: layer4
    params:
      _target_: my_package.models.build   # returns an nn.Module or a ModelBundle
      size: 224                           # optional preprocessing (defaults: 224, ImageNet mean/std)
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      depth: 18                           # anything else is passed to the target

builds the bundle. Keys in :data:`BUNDLE_KEYS` describe the bundle; all other keys go to the target,
which Hydra instantiates (nested ``_target_`` configs included). A target that returns a ModelBundle is
used as it is; only ``model.target_layer`` can still override its layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.models.bundle import ModelBundle, Preprocess

BUNDLE_KEYS = ("size", "mean", "std", "categories", "classifier", "model_name")


def _categories(spec: Any) -> list[str]:
    """``None``/``"imagenet"``: ImageNet-1k names; a list; or a text file with one name per line."""
    if spec is None or spec == "imagenet":
        return imagenet_categories()
    if isinstance(spec, str):
        return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    return [str(c) for c in spec]


def load_custom(**params: Any) -> ModelBundle:
    """Instantiate ``params["_target_"]`` and wrap it in a :class:`ModelBundle` (see module doc)."""
    target = params.get("_target_")
    if not target or target == "???":  # "???" is OmegaConf's unset-mandatory marker
        raise ValueError(
            "model=custom needs model.params._target_=package.module.function (returning an "
            "nn.Module or ModelBundle) and model.target_layer=LAYER"
        )
    from hydra.utils import instantiate

    build_args = {k: v for k, v in params.items() if k not in BUNDLE_KEYS}
    try:
        built = instantiate(build_args, _convert_="all")
    except Exception as err:  # Hydra wraps import and call errors in its own types
        raise ValueError(f"model=custom: could not build {target}: {err}".splitlines()[0]) from err
    if isinstance(built, ModelBundle):
        return built
    if not isinstance(built, nn.Module):
        raise ValueError(
            f"model=custom: {target} returned {type(built).__name__}, expected nn.Module or ModelBundle"
        )
    size = params.get("size") or 224
    preprocess = Preprocess(size=tuple(size) if isinstance(size, list | tuple) else (int(size), int(size)))
    if params.get("mean") is not None:
        preprocess.mean = tuple(params["mean"])  # type: ignore[assignment]
    if params.get("std") is not None:
        preprocess.std = tuple(params["std"])  # type: ignore[assignment]
    return ModelBundle(
        model=built.eval(),
        name=str(params.get("model_name") or str(target).rsplit(".", 1)[-1]),
        target_layer="",  # load_model sets it from model.target_layer
        preprocess=preprocess,
        categories=_categories(params.get("categories")),
        weights=str(target),
        classifier=params.get("classifier"),
    )
