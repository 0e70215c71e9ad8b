"""Explainer API: ``explainer(images, targets) -> maps``.

A map is stored at the target layer's resolution ``[B, h, w]`` (``[B, K, h, w]`` for ``K`` targets per
image); :func:`evalcam.maps.upsample` brings it to any image size on demand.

``targets`` may be
- an int tensor / list ``[B]`` of class indices (one map per image),
- an int tensor ``[B, K]`` (K maps per image, one forward and K backward passes),
- :class:`TopK` ``(k)``: the model's own top-k predictions, read from the same forward pass,
- a callable ``f(logits) -> [B]``: any differentiable function of the output (the Grad-CAM paper's
  "any differentiable activation"); one map per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.models.layers import resolve_layer

TargetFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TopK:
    """Explain the model's own ``k`` highest-scoring classes."""

    k: int = 1


Targets = torch.Tensor | Sequence[int] | TopK | TargetFn


@dataclass
class Explanation:
    maps: torch.Tensor  # [B, K, h, w], float32, on the model's device
    logits: torch.Tensor  # [B, num_classes] from the forward pass that produced the maps
    classes: torch.Tensor | None  # [B, K] class indices explained (None for callable targets)


def resolve_targets(targets: Targets, logits: torch.Tensor) -> tuple[torch.Tensor | None, list[TargetFn]]:
    """Turn any target spec into ``K`` score functions ``logits -> [B]`` (and the classes, if any)."""
    if callable(targets) and not isinstance(targets, torch.Tensor | TopK):
        return None, [targets]
    if isinstance(targets, TopK):
        classes = logits.detach().topk(targets.k, dim=1).indices
    else:
        classes = torch.as_tensor(targets, device=logits.device, dtype=torch.long)
        if classes.ndim == 0:
            classes = classes.expand(logits.shape[0])
        if classes.ndim == 1:
            classes = classes[:, None]
    if classes.shape[0] != logits.shape[0]:
        raise ValueError(f"got {classes.shape[0]} targets for a batch of {logits.shape[0]} images")
    num_classes = logits.shape[1]
    if bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ValueError(f"target class out of range: model has {num_classes} classes (0..{num_classes - 1})")

    def score(k: int) -> TargetFn:
        return lambda out: out.gather(1, classes[:, k : k + 1]).squeeze(1)

    return classes, [score(k) for k in range(classes.shape[1])]


class _Store:
    def __init__(self) -> None:
        self.activations: dict[str, torch.Tensor] = {}


@contextmanager
def capture_activations(model: nn.Module, layers: Sequence[str]) -> Iterator[_Store]:
    """Record the outputs of ``layers`` during forward passes; hooks are removed on exit, always."""
    store = _Store()
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            store.activations[name] = output
            # A clone goes downstream so in-place ops after this layer (ReLU(inplace=True) in
            # torchvision's VGG) cannot overwrite the activation or re-root its gradient.
            return output.clone()

        return hook

    try:
        for name in layers:
            handles.append(resolve_layer(model, name).register_forward_hook(make_hook(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


class Explainer:
    """Base for every method. Subclasses implement :meth:`explain`."""

    name = "explainer"

    def __init__(self, model: nn.Module, autocast: torch.dtype | None = None) -> None:
        self.model = model
        self.autocast = autocast

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Maps ``[B, h, w]`` for one target per image, ``[B, K, h, w]`` for ``K`` targets."""
        maps = self.explain(images, targets).maps
        single = isinstance(targets, TopK) and targets.k == 1
        if isinstance(targets, torch.Tensor | list | tuple):
            single = torch.as_tensor(targets).ndim <= 1
        if callable(targets) and not isinstance(targets, torch.Tensor | TopK):
            single = True
        return maps[:, 0] if single else maps


class CAMExplainer(Explainer):
    """Activation-map methods: ``map = ReLU(sum_c w_c A_c)`` over the target layer(s).

    Subclasses implement only :meth:`channel_weights` (or override :meth:`combine` for methods whose
    weighting is not per-channel). One forward pass per batch; one ``autograd.grad`` per target column,
    taken with respect to the hooked activations only (no parameter gradients are accumulated).
    """

    needs_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        relu: bool = True,
        autocast: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, autocast)
        layers = target_layer.split(",") if isinstance(target_layer, str) else list(target_layer)
        self.layers = [name.strip() for name in layers]
        for name in self.layers:
            resolve_layer(model, name)
        self.reshape = reshape
        self.relu = relu

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        """``[B, C]`` weights of the ``[B, C, h, w]`` activations."""
        raise NotImplementedError

    def combine(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        weights = self.channel_weights(activations, gradients, scores)
        cam = torch.einsum("bc,bchw->bhw", weights, activations)
        return F.relu(cam) if self.relu else cam

    def _spatial(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.reshape(tensor) if self.reshape is not None else tensor

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        with capture_activations(self.model, self.layers) as store, torch.enable_grad(), self._autocast():
            logits = self.model(images)
            classes, score_fns = resolve_targets(targets, logits)
            acts = [store.activations[name] for name in self.layers]
            columns = []
            for k, score_fn in enumerate(score_fns):
                scores = score_fn(logits)
                grads: Sequence[torch.Tensor | None] = [None] * len(acts)
                if self.needs_gradients:
                    grads = torch.autograd.grad(scores.sum(), acts, retain_graph=k < len(score_fns) - 1)
                per_layer = [
                    self.combine(
                        self._spatial(a.detach()).float(),
                        None if g is None else self._spatial(g).float(),
                        scores.detach().float(),
                    )
                    for a, g in zip(acts, grads, strict=True)
                ]
                columns.append(merge_layers(per_layer))
        return Explanation(maps=torch.stack(columns, 1), logits=logits.detach().float(), classes=classes)


def merge_layers(maps: list[torch.Tensor]) -> torch.Tensor:
    """Average per-layer maps at the finest layer's resolution, each scaled by its own max first so one
    layer's magnitude does not drown the others."""
    if len(maps) == 1:
        return maps[0]
    h = max(m.shape[-2] for m in maps)
    w = max(m.shape[-1] for m in maps)
    scaled = []
    for m in maps:
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        peak = m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        scaled.append(m / peak)
    return torch.stack(scaled).mean(0)
