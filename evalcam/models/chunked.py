"""Forward passes over many derived inputs, a memory-bounded chunk at a time."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

#: builds the network inputs ``[n, 3, H, W]`` of items ``start .. stop-1``
ItemInputs = Callable[[int, int], torch.Tensor]

_CONVOLUTIONAL: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def fast_layout(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` in the memory layout ``model`` runs fastest on: channels-last for a convolutional
    network on the CPU, as they are otherwise.

    oneDNN's convolutions take channels-last activations without re-ordering them at every layer;
    EfficientNet-Lite0 (one thread, batches of 4-16) runs 1.3-1.5x faster so, with logits equal to the
    NCHW forward up to float round-off (~1e-5 of logits ~10). The model's weights are left as they are.
    """
    if inputs.device.type != "cpu" or inputs.dim() != 4:
        return inputs
    if model not in _CONVOLUTIONAL:
        # A transformer's patch embedding is its only convolution: nothing to gain there.
        _CONVOLUTIONAL[model] = sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 3
    if not _CONVOLUTIONAL[model]:
        return inputs
    return inputs.contiguous(memory_format=torch.channels_last)


_COMPILE = {"enabled": False}
_COMPILED: weakref.WeakKeyDictionary[nn.Module, Callable[[torch.Tensor], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def compile_forwards(enabled: bool) -> None:
    """Run :func:`chunked_forward` through ``torch.compile`` (the run's ``compile=true``).

    Perturbation metrics spend nearly all their time in these forwards: EfficientNet-Lite0 on one CPU thread,
    batch 8, channels-last, 0.18 s compiled vs 0.28 s eager (logits equal to ~6e-6 of ~7), after a one-off
    compile of ~40 s per model (Inductor caches it on disk for later processes). Every chunk is padded to
    the chunk size, so one input shape means one compile."""
    _COMPILE["enabled"] = bool(enabled)


def _forward_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if not _COMPILE["enabled"]:
        return model
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model, dynamic=False)
    return _COMPILED[model]


def chunked_forward(
    model: nn.Module, count: int, inputs_of: ItemInputs, chunk_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(items, outputs)`` for items ``0 .. count-1`` in order, ``chunk_size`` network inputs per forward
    (in :func:`fast_layout`; compiled after :func:`compile_forwards`).

    Inputs are built lazily per chunk, so only one chunk of derived copies is ever alive.
    """
    step = max(1, int(chunk_size))
    forward = _forward_of(model)
    for start in range(0, count, step):
        items = slice(start, min(count, start + step))
        inputs = inputs_of(items.start, items.stop)
        n = inputs.shape[0]
        if forward is not model and n < step:  # one shape, one compile: pad with copies of the last input
            inputs = torch.cat([inputs, inputs[-1:].expand(step - n, *inputs.shape[1:])])
        yield items, forward(fast_layout(model, inputs))[:n]
