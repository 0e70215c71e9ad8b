"""Shared set-up of the robustness/randomization tests (issue 18): a tiny CNN, a batch of it explained by
Grad-CAM, and an explain function with Quantus' signature that runs evalcam's Grad-CAM on any model."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from evalcam.data.types import Sample
from evalcam.maps import upsample
from evalcam.methods.gradcam import GradCAM
from evalcam.metrics.base import EvalBatch
from evalcam.models.bundle import ModelBundle, Preprocess
from evalcam.pipeline import explain_batch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class TinyNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


def tiny_batch(n: int = 3, size: int = 16, explainer=None, model: nn.Module | None = None) -> EvalBatch:
    model = (model or TinyNet()).eval()
    bundle = ModelBundle(
        model=model, name="tiny", target_layer="act2", preprocess=Preprocess((size, size), MEAN, STD)
    )
    inputs = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    samples = [
        Sample(image=torch.zeros(3, size, size, dtype=torch.uint8), image_id=f"img{i}", labels=[])
        for i in range(n)
    ]
    explainer = explainer or GradCAM(model, "act2")
    return dataclasses.replace(explain_batch(samples, inputs, bundle, explainer, topk=1, need_gt=False))


def quantus_explain(model: nn.Module, inputs, targets, **_kwargs) -> np.ndarray:
    """Quantus' ``explain_func``: evalcam's Grad-CAM of ``targets`` on ``model``, at input resolution."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    maps = GradCAM(model, "act2").explain(x, torch.as_tensor(np.asarray(targets)).long()).maps[:, 0]
    return upsample(maps, tuple(x.shape[-2:]))[:, None].numpy()
