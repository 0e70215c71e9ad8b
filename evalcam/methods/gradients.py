"""Input-resolution methods: maps ``[B, K, H, W]`` at the network input's size.

- Backprop / vanilla gradient (Simonyan et al. 2014; "Backprop" in the Grad-CAM paper's tables):
  ``dS/dx``.
- Guided Backpropagation (Springenberg et al. 2015): at every ReLU the backward signal is also rectified,
  ``grad_in = 1[x > 0] * ReLU(grad_out)`` (ReLU6: ``1[0 < x < 6] * ReLU(grad_out)``).
- Guided Grad-CAM (Selvaraju et al. 2017, Sec. 3.1): guided backpropagation times Grad-CAM upsampled
  bilinearly to the input size.

The RGB gradient becomes one value per pixel as in Simonyan et al. (Sec. 3.1): ``max_c |grad_c|``. The full
signed ``[B, K, 3, H, W]`` tensor stays in ``Explanation.extra["rgb"]`` (Figure 1 of the Grad-CAM paper).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods.base import Explainer, Explanation, Targets, resolve_targets
from evalcam.methods.gradcam import GradCAM
from evalcam.methods.hooks import forward_hooks


def _rectify(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp_min(0)


def _rectify_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
    """Rectify the gradient arriving at a ReLU's output, so the ReLU's own backward then supplies the
    ``1[x > 0]`` factor of guided backpropagation. A tensor hook, not a replaced output: no copy of every
    activation, and a hook registered before a later in-place op (``x += residual``, an in-place ReLU
    reused) still sees the gradient of this ReLU's output, which is what autograd guarantees for hooks
    registered before an in-place modification."""
    if output.requires_grad:
        output.register_hook(_rectify)


@contextmanager
def guided_relus(model: nn.Module, types: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)) -> Iterator[int]:
    """Make every ``types`` module of ``model`` guided for the duration; yields how many were hooked.

    Forward hooks fire on every call, so a module reused several times in one forward pass (EfficientNet's
    shared ``_swish``) is guided at each use; in-place ReLUs work because the hook wraps the returned
    tensor. ReLUs applied functionally (``F.relu``) are not seen, as with every module-based tool."""
    modules = [m for m in model.modules() if isinstance(m, types)]
    with forward_hooks((m, _rectify_output) for m in modules):
        yield len(modules)


class Backprop(Explainer):
    """Vanilla gradient of the target score with respect to the input image."""

    name = "backprop"

    def _gradient_context(self) -> AbstractContextManager:
        return nullcontext()

    def input_gradients(
        self, images: torch.Tensor, targets: Targets
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One forward pass; returns logits, explained classes and ``[B, K, channels, H, W]`` gradients."""
        x = images.to(self.device).detach().requires_grad_(True)
        with self._gradient_context(), torch.enable_grad(), self._autocast():
            logits = self.model(x)
            classes, score_fns = resolve_targets(targets, logits)
            grads = [
                torch.autograd.grad(fn(logits).sum(), x, retain_graph=k < len(score_fns) - 1)[0]
                for k, fn in enumerate(score_fns)
            ]
        return logits.detach().float(), classes, torch.stack(grads, 1).float()

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        logits, classes, rgb = self.input_gradients(images, targets)
        return Explanation(maps=rgb.abs().amax(2), logits=logits, classes=classes, extra={"rgb": rgb})


class GuidedBackprop(Backprop):
    """Guided backpropagation through every ``nn.ReLU`` / ``nn.ReLU6`` module (hooks removed on exit)."""

    name = "guided_backprop"

    def _gradient_context(self) -> AbstractContextManager:
        return guided_relus(self.model)


class GuidedGradCAM(GuidedBackprop):
    """Guided Grad-CAM: ``guided_rgb * upsample_bilinear(Grad-CAM)``. Two forward passes (plain gradients
    for Grad-CAM, guided ones for the input), the classes of the first reused by the second so ``TopK``
    targets match. ``extra`` holds ``rgb`` (the product) and ``gradcam`` (feature resolution)."""

    name = "guided_gradcam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, autocast=autocast)
        self.target_layer, self.reshape = target_layer, reshape
        GradCAM(model, target_layer, reshape=reshape)  # fail early on a wrong layer name

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        # Built per call so it always explains the current ``self.model``.
        gradcam = GradCAM(self.model, self.target_layer, reshape=self.reshape, autocast=self.autocast)
        cam = gradcam.explain(images, targets)
        same_targets = cam.classes if cam.classes is not None else targets
        logits, _, guided = self.input_gradients(images, same_targets)
        weights = F.interpolate(cam.maps, size=guided.shape[-2:], mode="bilinear", align_corners=False)
        rgb = guided * weights[:, :, None]
        return Explanation(
            maps=rgb.abs().amax(2),
            logits=logits,
            classes=cam.classes,
            extra={"rgb": rgb, "gradcam": cam.maps},
        )
