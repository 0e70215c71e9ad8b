"""Forward passes over many derived inputs, a memory-bounded chunk at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

#: builds the network inputs ``[n, 3, H, W]`` of items ``start .. stop-1``
ItemInputs = Callable[[int, int], torch.Tensor]


def chunked_forward(
    model: nn.Module, count: int, inputs_of: ItemInputs, chunk_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(items, outputs)`` for items ``0 .. count-1`` in order, ``chunk_size`` network inputs per forward.

    Inputs are built lazily per chunk, so only one chunk of derived copies is ever alive.
    """
    step = max(1, int(chunk_size))
    for start in range(0, count, step):
        items = slice(start, min(count, start + step))
        yield items, model(inputs_of(items.start, items.stop))
