"""Any pytorch-grad-cam (``pip install grad-cam``) CAM class behind evalcam's explainer API.

``build_explainer("pgc/ScoreCAM", bundle)`` -> :class:`PytorchGradCAM`. Its maps come back at the input's
resolution and min-max scaled per map, as that library returns them. One pytorch-grad-cam call per target
column; the library's hooks are released and parameter gradients cleared after every call.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from evalcam.methods.base import Explainer, Explanation, TargetFn, Targets, resolve_targets
from evalcam.models.layers import resolve_layer

PREFIX = "pgc/"


def _library() -> ModuleType:
    try:
        return importlib.import_module("pytorch_grad_cam")
    except ImportError as err:
        raise ImportError("method pgc/... needs pytorch-grad-cam: pip install grad-cam") from err


def cam_classes() -> dict[str, type]:
    """pytorch-grad-cam's CAM classes (subclasses of its ``BaseCAM``) by name."""
    library = _library()
    base = importlib.import_module("pytorch_grad_cam.base_cam").BaseCAM
    return {
        name: obj
        for name, obj in vars(library).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
    }


class _RowTarget:
    """pytorch-grad-cam calls targets on one output row ``[num_classes]``; ours take ``[B, num_classes]``."""

    def __init__(self, fn: TargetFn) -> None:
        self.fn = fn

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        return self.fn(row[None])[0]


class PytorchGradCAM(Explainer):
    """Adapter: ``cam_class`` is a pytorch-grad-cam class name (``GradCAM``, ``ScoreCAM``, ...);
    ``**cam_kwargs`` go to its constructor. Callable targets must act row by row."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        cam_class: str,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        autocast: torch.dtype | str | None = None,
        **cam_kwargs: Any,
    ) -> None:
        super().__init__(model, autocast)
        if self.autocast is not None:
            raise ValueError(
                "pgc/ methods run in full precision (pytorch-grad-cam hands activations to NumPy)"
            )
        classes = cam_classes()
        if cam_class not in classes:
            raise ValueError(
                f"pytorch-grad-cam has no CAM class {cam_class!r}; available: {', '.join(sorted(classes))}"
            )
        self.cls, self.name = classes[cam_class], PREFIX + cam_class
        names = target_layer.split(",") if isinstance(target_layer, str) else list(target_layer)
        self.layer_names = [n.strip() for n in names]
        for name in self.layer_names:
            resolve_layer(model, name)
        if isinstance(reshape, str):
            from evalcam.methods.reshape import get_reshape

            reshape = get_reshape(reshape)
        self.reshape, self.cam_kwargs = reshape, cam_kwargs

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        with torch.no_grad():
            logits = self.model(images).float()
        classes, score_fns = resolve_targets(targets, logits)
        target_classes = importlib.import_module("pytorch_grad_cam.utils.model_targets")
        columns = []
        for k, fn in enumerate(score_fns):
            if classes is not None:
                column = [target_classes.ClassifierOutputTarget(int(c)) for c in classes[:, k].tolist()]
            else:
                column = [_RowTarget(fn)] * images.shape[0]
            cam = self.cls(
                model=self.model,
                target_layers=[resolve_layer(self.model, n) for n in self.layer_names],
                reshape_transform=self.reshape,
                **self.cam_kwargs,
            )
            try:
                maps = cam(input_tensor=images, targets=column)
            finally:
                cam.activations_and_grads.release()
                self.model.zero_grad(set_to_none=True)
            columns.append(torch.as_tensor(maps, dtype=torch.float32, device=self.device))
        return Explanation(maps=torch.stack(columns, 1), logits=logits, classes=classes)
