"""CAM successors the CAM papers compare with, batched on the model's device.

Smooth Grad-CAM++ (Omeiza et al. 2019, arXiv:1908.01224), :class:`SmoothGradCAMPlusPlus`. With ``A`` the
target layer's activation of the clean image and ``g_s = dS/dA`` at the noisy copy
``x + N(0, sigma^2)`` (``s = 1..n``), the Grad-CAM++ derivatives are replaced by their averages

    D1 = 1/n sum_s g_s,   D2 = 1/n sum_s g_s^2,   D3 = 1/n sum_s g_s^3
    alpha_ij = D2_ij / (2 D2_ij + sum_ab A_ab D3_ij)            (0 where the denominator is 0)
    w_c      = sum_ij alpha_ij ReLU(D1_ij)
    map      = ReLU(sum_c w_c A_c)

``sigma = noise_level * (x_max - x_min)`` per image (SmoothGrad's 10-20 % noise level, Smilkov et al. 2017).
The noise is drawn once from ``seed`` and shared by every image, so maps do not depend on the batch.
TorchCAM's ``SmoothGradCAMpp`` differs: it uses ``sum_ab A_ab D3_ab`` (one sum per channel) in the
denominator and the *last* noisy gradient instead of ``D1`` in ``w_c``.

FullGrad (Srinivas & Fleuret, NeurIPS 2019, Eq. 7), :class:`FullGrad`:

    S(x) = psi(dS/dx * x) + sum_l sum_c psi(dS/dz_l * b_l)

over every convolution with a bias and every BatchNorm (its effective bias ``beta - gamma mu / sqrt(var +
eps)``), ``z_l`` the layer's output. ``psi`` is the authors' post-processing: absolute value, min-max scaling
of the whole ``[C, h, w]`` tensor per image, bilinear upsampling to the input size, sum over channels.
Maps come back at input resolution. One forward pass and one ``autograd.grad`` per target column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods.base import (
    CAMExplainer,
    Explainer,
    Explanation,
    Targets,
    capture_activations,
    merge_layers,
    resolve_targets,
)


class SmoothGradCAMPlusPlus(CAMExplainer):
    name = "smoothgradcampp"

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        num_samples: int = 25,
        noise_level: float = 0.15,
        seed: int = 0,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        relu: bool = True,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, relu=relu, autocast=autocast)
        if num_samples < 1 or noise_level < 0:
            raise ValueError(
                "smoothgradcampp needs num_samples >= 1 and noise_level >= 0, "
                f"got {num_samples} and {noise_level}"
            )
        self.num_samples, self.noise_level, self.seed = int(num_samples), float(noise_level), int(seed)

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, B, C, H, W]`` noise: one unit draw per sample shared by all images, scaled per image."""
        generator = torch.Generator().manual_seed(self.seed)
        unit = torch.randn(self.num_samples, 1, *images.shape[1:], generator=generator).to(images.device)
        spread = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(1, -1, 1, 1, 1)
        return unit * (self.noise_level * spread)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        with capture_activations(self.model, self.layers) as store, torch.no_grad(), self._autocast():
            logits = self.model(images)
            acts = [self._spatial(store.activations[name]).float() for name in self.layers]
        classes, score_fns = resolve_targets(targets, logits)
        # moments[k][layer] = [sum g, sum g^2, sum g^3] over the noisy copies
        moments: list[list[list[torch.Tensor]]] = [
            [[torch.zeros_like(a) for _ in range(3)] for a in acts] for _ in score_fns
        ]
        for noise in self.noise(images):
            x = (images + noise).detach().requires_grad_(True)
            with capture_activations(self.model, self.layers) as store, torch.enable_grad(), self._autocast():
                out = self.model(x)
                noisy = [store.activations[name] for name in self.layers]
                for k, fn in enumerate(score_fns):
                    grads = torch.autograd.grad(fn(out).sum(), noisy, retain_graph=k < len(score_fns) - 1)
                    for sums, grad in zip(moments[k], grads, strict=True):
                        g = self._spatial(grad).float()
                        sums[0] += g
                        sums[1] += g * g
                        sums[2] += g * g * g
        columns = []
        with self._full_precision():
            for per_layer in moments:
                maps = []
                for a, (s1, s2, s3) in zip(acts, per_layer, strict=True):
                    d1, d2, d3 = s1 / self.num_samples, s2 / self.num_samples, s3 / self.num_samples
                    denominator = 2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3
                    safe = torch.where(denominator != 0, denominator, 1.0)
                    alpha = torch.where(denominator != 0, d2 / safe, 0.0)
                    weights = (alpha * F.relu(d1)).sum(dim=(2, 3))
                    cam = torch.einsum("bc,bchw->bhw", weights, a)
                    maps.append(F.relu(cam) if self.relu else cam)
                columns.append(merge_layers(maps))
        return Explanation(maps=torch.stack(columns, 1), logits=logits.detach().float(), classes=classes)


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolutions with a bias and BatchNorms (FullGrad's bias sources), by qualified name."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if (isinstance(module, nn.modules.conv._ConvNd) and module.bias is not None)
        or isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]


def effective_bias(module: nn.Module) -> torch.Tensor:
    """The bias a layer adds to each output channel; for BatchNorm ``beta - gamma mu / sqrt(var + eps)``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None or module.running_var is None:
            raise ValueError("fullgrad needs BatchNorm layers with running statistics (track_running_stats)")
        scale = module.weight if module.weight is not None else torch.ones_like(module.running_mean)
        shift = module.bias if module.bias is not None else torch.zeros_like(module.running_mean)
        return (shift - scale * module.running_mean / torch.sqrt(module.running_var + module.eps)).detach()
    return module.bias.detach()


def postprocess(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """FullGrad's psi: ``|t|``, min-max scaled per image over ``[C, h, w]``, upsampled, summed over C."""
    t = tensor.abs().float()
    flat = t.flatten(1)
    low = flat.amin(1).view(-1, 1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    # Bilinear upsampling is linear, so summing the channels first gives the same map at 1/C of the cost.
    t = ((t - low) / span).sum(1, keepdim=True)
    if t.shape[-2:] != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t[:, 0]


class FullGrad(Explainer):
    name = "fullgrad"

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        layers = bias_layers(self.model)
        names = [name for name, _ in layers]
        x = images.to(self.device).detach().requires_grad_(True)
        size = (x.shape[-2], x.shape[-1])
        with capture_activations(self.model, names) as store, torch.enable_grad(), self._autocast():
            logits = self.model(x)
            classes, score_fns = resolve_targets(targets, logits)
            outputs = [store.activations[name] for name in names]
            columns = []
            for k, fn in enumerate(score_fns):
                grads = torch.autograd.grad(
                    fn(logits).sum(), [x, *outputs], retain_graph=k < len(score_fns) - 1
                )
                with self._full_precision():
                    total = postprocess(grads[0] * x.detach(), size)
                    for (_, module), grad in zip(layers, grads[1:], strict=True):
                        bias = effective_bias(module).float().view(1, -1, *([1] * (grad.ndim - 2)))
                        if grad.ndim == 4:  # bias terms of 2-D feature maps only, as in the paper's code
                            total = total + postprocess(grad.float() * bias, size)
                columns.append(total)
        return Explanation(maps=torch.stack(columns, 1), logits=logits.detach().float(), classes=classes)
