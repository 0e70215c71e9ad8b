"""Chunked forwards (evalcam.models.chunked): the layout and the opt-in compiled path give the numbers of a
plain forward, chunk by chunk, including a last chunk shorter than the others."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import ConvToy

from evalcam.models import chunked
from evalcam.models.chunked import chunked_forward, compile_forwards, fast_layout


class Deeper(ConvToy):
    """Three convolutions: enough for :func:`fast_layout` to choose channels-last."""

    def __init__(self) -> None:
        super().__init__(width=6)
        self.more = torch.nn.Sequential(
            torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.Conv2d(6, 6, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.more(self.act(self.conv(x))).mean((2, 3)))


def _outputs(model, inputs, chunk):
    parts = list(chunked_forward(model, len(inputs), lambda lo, hi: inputs[lo:hi], chunk))
    assert [p[0] for p in parts] == [
        slice(lo, min(lo + chunk, len(inputs))) for lo in range(0, len(inputs), chunk)
    ]
    return torch.cat([p[1] for p in parts])


def test_chunks_in_the_fast_layout_equal_one_plain_forward():
    model = Deeper().eval()
    inputs = torch.randn(7, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert fast_layout(model, inputs).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(_outputs(model, inputs, 3), model(inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile needs a C++ compiler"
)
def test_compiled_chunks_equal_eager_ones_with_a_short_last_chunk():
    model = Deeper().eval()
    inputs = torch.randn(7, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    try:
        compile_forwards(True)
        with torch.no_grad():
            compiled = _outputs(model, inputs, 3)  # chunks 3, 3, 1: the last one padded to 3
        assert model in chunked._COMPILED  # the compiled path ran, not the eager one
    finally:
        compile_forwards(False)
    with torch.no_grad():
        torch.testing.assert_close(compiled, model(inputs), atol=1e-5, rtol=1e-5)
