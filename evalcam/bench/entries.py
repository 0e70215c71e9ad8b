"""What the benchmark times: an :class:`Entry` is a set-up that returns a call and its clean-up; the
floors bound what any method must cost; ``ours_entry`` wraps an evalcam method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from evalcam.models.bundle import ModelBundle
from evalcam.models.chunked import fast_layout
from evalcam.models.layers import resolve_layer


@dataclass
class Entry:
    """One benchmarked callable: ``setup()`` returns ``(call(x, classes), cleanup())``."""

    name: str
    library: str
    setup: Callable[[], tuple[Callable[[torch.Tensor, torch.Tensor], Any], Callable[[], None]]]
    ours: str | None = None  # the evalcam method this entry is compared with (peers and ours)
    note: str = ""
    comparable: bool = True  # False: computes something else on this model; no "best peer" ratio


@dataclass
class Timing:
    name: str
    library: str
    ours: str | None
    median_s: float | None
    images_per_s: float | None
    repeats: int
    note: str = ""
    times_s: list[float] = field(default_factory=list)
    comparable: bool = True


def floor_entries(model: nn.Module, layer_name: str) -> list[Entry]:
    layer = resolve_layer(model, layer_name)

    def forward():
        def call(x, classes):
            with torch.no_grad():
                return model(fast_layout(model, x))

        return call, lambda: None

    def grad_at_layer():
        store: dict[str, torch.Tensor] = {}

        def hook(_m, _i, out):
            store["a"] = out

        handle = layer.register_forward_hook(hook)

        def call(x, classes):
            with torch.enable_grad():
                out = model(fast_layout(model, x))
                return torch.autograd.grad(out.gather(1, classes[:, None]).sum(), store["a"])[0]

        return call, handle.remove

    def full_backward():
        def call(x, classes):
            with torch.enable_grad():
                x = fast_layout(model, x).detach().requires_grad_(True)
                out = model(x)
                return torch.autograd.grad(out.gather(1, classes[:, None]).sum(), x)[0]

        return call, lambda: None

    return [
        Entry("floor:forward", "torch", forward, note="no_grad forward"),
        Entry("floor:forward+grad@layer", "torch", grad_at_layer, note=f"d score / d {layer_name}"),
        Entry("floor:forward+backward", "torch", full_backward, note="d score / d input"),
    ]


def ours_entry(name: str, bundle: ModelBundle, params: dict[str, Any]) -> Entry:
    def setup():
        from evalcam.methods import build_explainer

        explainer = build_explainer(name, bundle, **dict(params))

        def call(x, classes):
            return explainer.explain(x, classes).maps

        return call, lambda: None

    note = ", ".join(f"{k}={v}" for k, v in params.items())
    return Entry(name, "evalcam", setup, ours=name, note=note)


def autocast_entry(entry: Entry, device: torch.device, dtype: torch.dtype) -> Entry:
    def setup():
        call, cleanup = entry.setup()

        def wrapped(x, classes):
            with torch.autocast(device_type=device.type, dtype=dtype):
                return call(x, classes)

        return wrapped, cleanup

    return Entry(
        entry.name, entry.library, setup, entry.ours, ", ".join(filter(None, [entry.note, str(dtype)]))
    )
