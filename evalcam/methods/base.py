"""Explainer API: ``explainer(images, targets) -> maps``.

A map is stored at the target layer's resolution ``[B, h, w]`` (``[B, K, h, w]`` for ``K`` targets per
image); :func:`evalcam.maps.upsample` brings it to any image size on demand. Input-gradient methods
(Backprop, Guided Backprop, Guided Grad-CAM) return maps at the network input's resolution.

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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.models.chunked import fast_layout
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
    # Method-specific by-products, e.g. "rgb": the full input gradient [B, K, 3, H, W] of the
    # input-resolution methods (Figure 1 of the Grad-CAM paper shows it in colour).
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


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


_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def parse_autocast(value: torch.dtype | str | None) -> torch.dtype | None:
    """``None``/"none"/"fp32" (full precision), "bf16"/"bfloat16", "fp16"/"float16", or a torch dtype."""
    if value is None or isinstance(value, torch.dtype):
        return None if value in (None, torch.float32) else value
    key = str(value).lower()
    if key in ("none", "null", "fp32", "float32", "false", ""):
        return None
    if key not in _DTYPES:
        raise ValueError(f"unknown autocast dtype {value!r}; use one of: none, {', '.join(_DTYPES)}")
    return _DTYPES[key]


class Explainer:
    """Base for every method. Subclasses implement :meth:`explain`."""

    name = "explainer"
    #: ``(method name, params)`` when built by :func:`evalcam.methods.build_explainer`: how to build the
    #: same method on another model (the randomization metrics rebuild it on a randomized copy)
    recipe: tuple[str, dict[str, Any]] | None = None

    def __init__(self, model: nn.Module, autocast: torch.dtype | str | None = None) -> None:
        self.model = model
        # Mixed precision for the network's passes only; map arithmetic always runs in float32.
        self.autocast = parse_autocast(autocast)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def _full_precision(self):
        """Undo an enclosing autocast (SVD and eps-guarded divisions are not safe in half precision)."""
        return torch.autocast(device_type=self.device.type, enabled=False)

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        """Whether the method can run on ``model`` at all (attention methods need attention layers);
        sweeps over every method (benchmarks, tests) skip the ones that cannot."""
        return True

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
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        relu: bool = True,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, autocast)
        layers = target_layer.split(",") if isinstance(target_layer, str) else list(target_layer)
        self.layers = [name.strip() for name in layers]
        for name in self.layers:
            resolve_layer(model, name)
        # ``reshape`` turns a layer's raw output into [B, C, h, w] (e.g. ViT tokens); a string names one
        # of :data:`evalcam.methods.reshape.RESHAPES` so configs can select it.
        if isinstance(reshape, str):
            from evalcam.methods.reshape import get_reshape

            reshape = get_reshape(reshape)
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
        # Channels-last on the CPU: oneDNN runs the forward and the backward to the layer without
        # re-ordering every activation (Grad-CAM, Lite0, batch 16, one thread: 1.75x; maps equal to ~1e-6).
        images = fast_layout(self.model, images.to(self.device))
        if self.needs_gradients:
            # Keeps the graph alive even when every parameter is frozen; autograd.grad below only
            # differentiates down to the hooked activations, never to the input.
            images = images.detach().requires_grad_(True)
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.no_grad()
        with capture_activations(self.model, self.layers) as store, grad_mode, self._autocast():
            logits = self.model(images)
            classes, score_fns = resolve_targets(targets, logits)
            acts = [store.activations[name] for name in self.layers]
            per_column = []
            for k, score_fn in enumerate(score_fns):
                scores = score_fn(logits)
                grads: Sequence[torch.Tensor | None] = [None] * len(acts)
                if self.needs_gradients:
                    grads = torch.autograd.grad(scores.sum(), acts, retain_graph=k < len(score_fns) - 1)
                per_column.append((scores.detach().float(), grads))
        acts = [self._spatial(a.detach()).float() for a in acts]
        columns = []
        with self._full_precision():
            for scores, grads in per_column:
                per_layer = [
                    self.combine(a, None if g is None else self._spatial(g).float(), scores)
                    for a, g in zip(acts, grads, strict=True)
                ]
                columns.append(merge_layers(per_layer))
        maps = torch.stack(columns, 1).contiguous()
        return Explanation(maps=maps, logits=logits.detach().float().contiguous(), classes=classes)


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
