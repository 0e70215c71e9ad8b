"""Gradient-weighted CAMs: one forward pass and one ``autograd.grad`` per target column (see
:class:`~evalcam.methods.base.CAMExplainer`). ``A`` is the target layer's activation ``[B, C, h, w]``,
``g = dS/dA`` the gradient of the explained score ``S`` (pre-softmax logit for class targets).

- Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2): ``w_c = mean_ij g``.
- Counterfactual Grad-CAM (same paper, Sec. "Counterfactual Explanations"): ``w_c = mean_ij (-g)``, the
  regions whose removal would make the network *more* confident in the class.
- Grad-CAM++ (Chattopadhyay et al., WACV 2018), two variants, see :class:`GradCAMPlusPlus`.
- XGrad-CAM (Fu et al., BMVC 2020): ``w_c = sum_ij (A_ij / sum_ab A_ab) g_ij``.
- HiResCAM (Draelos & Carin 2020): ``map = ReLU(sum_c g * A)`` (element-wise, no spatial averaging).
- LayerCAM (Jiang et al., TIP 2021): ``map = ReLU(sum_c ReLU(g) * A)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evalcam.methods.base import CAMExplainer


class GradCAM(CAMExplainer):
    name = "gradcam"

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        return gradients.mean(dim=(2, 3))


class CounterfactualGradCAM(CAMExplainer):
    """Grad-CAM with negated gradients: equals ``ReLU(-(sum_c w_c A_c))`` of un-rectified Grad-CAM."""

    name = "counterfactual_gradcam"

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        return -gradients.mean(dim=(2, 3))


class XGradCAM(CAMExplainer):
    name = "xgradcam"

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        total = activations.sum(dim=(2, 3))
        weighted = (gradients * activations).sum(dim=(2, 3))
        # A channel that is zero everywhere contributes nothing to the map whatever its weight.
        return torch.where(total != 0, weighted / torch.where(total != 0, total, 1.0), 0.0)


class HiResCAM(CAMExplainer):
    name = "hirescam"

    def combine(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        cam = (gradients * activations).sum(1)
        return F.relu(cam) if self.relu else cam


class LayerCAM(CAMExplainer):
    name = "layercam"

    def combine(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        cam = (F.relu(gradients) * activations).sum(1)
        return F.relu(cam) if self.relu else cam


class GradCAMPlusPlus(CAMExplainer):
    """Grad-CAM++ exactly as derived in the paper (Eq. 9-10 and 17-19) for ``Y = exp(S)``.

    With ``Y = exp(S)`` and ``S`` piecewise linear in ``A`` (ReLU networks, so ``d2S/dA2 = 0``):
    ``dY/dA = e^S g``, ``d2Y/dA2 = e^S g^2``, ``d3Y/dA3 = e^S g^3``, hence

        alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)      (e^S cancels)
        w_c      = sum_ij alpha_ij ReLU(e^S g_ij)

    Differences from :class:`GradCAMPlusPlusApprox` (the pytorch-grad-cam formula):

    1. the ``e^S`` factor of ``dY/dA`` is kept. It is a positive scale per map, so normalised maps are
       unaffected, but raw magnitudes follow the paper (maps of different classes are comparable);
    2. the denominator is used as is (``alpha = 0`` only where it is exactly 0), whereas the approximation
       adds ``1e-6`` to it. That epsilon is not scale-free: at EfficientNet-Lite0's 7x7 head, ``|g|`` is
       ~1e-4..3e-3, so ``2 g^2`` is of the same order as the epsilon and the approximation shrinks the
       weights of weak-gradient channels (by more than half for the weakest). The maps move little
       (correlation > 0.999 on real photos) because those channels carry little weight anyway.

    ``e^S`` is applied in float64; a weight beyond float32's range (scores above ~88) becomes ``inf`` and
    the metrics then count that map as degenerate.
    """

    name = "gradcampp"

    def alphas(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(2, 3), keepdim=True)
        g2 = gradients.pow(2)
        denominator = 2 * g2 + total * g2 * gradients
        return torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1.0), 0.0)

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        alpha = self.alphas(activations, gradients)
        weights = (alpha * F.relu(gradients)).sum(dim=(2, 3))
        scale = torch.exp(scores.double())[:, None]  # ReLU(e^S g) = e^S ReLU(g)
        return (weights.double() * scale).float()


class GradCAMPlusPlusApprox(GradCAMPlusPlus):
    """The widespread Grad-CAM++ variant of pytorch-grad-cam: ``alpha = g^2 / (2 g^2 + sum A g^3 + 1e-6)``
    (zero where ``g = 0``) and ``w_c = sum_ij alpha_ij ReLU(g_ij)`` (no ``e^S``). See :class:`GradCAMPlusPlus`
    for what this changes."""

    name = "gradcampp_approx"
    eps = 1e-6

    def alphas(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(2, 3), keepdim=True)
        g2 = gradients.pow(2)
        alpha = g2 / (2 * g2 + total * g2 * gradients + self.eps)
        return torch.where(gradients != 0, alpha, 0.0)

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        assert gradients is not None
        return (self.alphas(activations, gradients) * F.relu(gradients)).sum(dim=(2, 3))
