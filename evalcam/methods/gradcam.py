"""Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2): channel weights are the spatially averaged gradients
of the class score (pre-softmax) with respect to the target layer's activations."""

from __future__ import annotations

import torch

from evalcam.methods.base import CAMExplainer


class GradCAM(CAMExplainer):
    name = "gradcam"

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        return gradients.mean(dim=(2, 3))
