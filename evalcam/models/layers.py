"""Resolve target layers by dotted name, with an error that lists what exists."""

from __future__ import annotations

import difflib

from torch import nn


class LayerNotFoundError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def conv_like_layers(model: nn.Module) -> list[str]:
    """Names of modules that output spatial feature maps (the usual CAM targets), last ones first."""
    names = [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.ReLU | nn.ReLU6 | nn.Sequential)
    ]
    return names[::-1]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return ``model``'s submodule called ``name`` (``features.29``, ``layer4``, ``head_act``...).

    The dotted path is followed first (``get_submodule``): ``named_modules()`` lists a module instance only
    under the first name it meets, so a module shared under several names (one ReLU reused everywhere)
    would otherwise be unreachable by its other paths.
    """
    if name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    modules = dict(model.named_modules())
    close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
    candidates = close or conv_like_layers(model)[:8]
    raise LayerNotFoundError(
        f"layer {name!r} not found in {type(model).__name__}; candidates: {', '.join(candidates)} "
        f"(set model.target_layer=NAME; list all with `python -m evalcam layers model=...`)"
    )
