"""Gradient-free activation maps.

- CAM (Zhou et al., CVPR 2016, Eq. 2): for a network ending in global average pooling + one linear layer,
  ``M_c = sum_k W[c, k] A_k``. It needs that head, so the model's classifier is checked on every forward
  pass (its input must be the spatial mean of the target layer and its output the model's output).
- Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of the activations on their first principal
  component; class-agnostic (every target of an image gets the same map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods.base import (
    CAMExplainer,
    Explanation,
    Targets,
    capture_activations,
    merge_layers,
    resolve_targets,
)
from evalcam.methods.hooks import forward_hooks
from evalcam.models.layers import resolve_layer


class LinearHeadProbe:
    """Records the classifier's input and output during a forward pass, to check the GAP+FC structure."""

    def __init__(self, model: nn.Module, classifier: str) -> None:
        self.name = classifier
        self.module = resolve_layer(model, classifier)
        self.inputs: torch.Tensor | None = None
        self.outputs: torch.Tensor | None = None

    def hook(self, _module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.inputs, self.outputs = inputs[0], output

    def hooks(self):
        return forward_hooks([(self.module, self.hook)])

    def problem(self, activations: torch.Tensor, logits: torch.Tensor, loose: bool) -> str | None:
        """Why ``logits = W mean_ij(A) + b`` does not hold on the last forward pass (None when it does)."""
        if not isinstance(self.module, nn.Linear):
            return f"{self.name!r} is a {type(self.module).__name__}, not nn.Linear"
        if activations.ndim != 4 or activations.shape[1] != self.module.in_features:
            return (
                f"{self.name!r} takes {self.module.in_features} features but the target layer has shape "
                f"{tuple(activations.shape)}"
            )
        if self.inputs is None or self.outputs is None:
            return f"{self.name!r} was not called in the forward pass"
        rtol = 3e-2 if loose else 1e-4

        def close(a: torch.Tensor, b: torch.Tensor) -> bool:
            a, b = a.detach().float().flatten(1), b.detach().float().flatten(1)
            return a.shape == b.shape and bool(((a - b).abs().amax() <= rtol * b.abs().amax() + 1e-6).item())

        if not close(self.inputs, activations.mean(dim=(2, 3))):
            return f"the input of {self.name!r} is not the global average of the target layer"
        if not close(self.outputs, logits):
            return f"the output of {self.name!r} is not the model's output"
        return None


def _single_layer(layers: Sequence[str], method: str) -> str:
    if len(layers) != 1:
        raise ValueError(f"{method} explains one target layer (the one before the GAP+FC head), got {layers}")
    return layers[0]


class CAM(CAMExplainer):
    """CAM; ``classifier`` names the final ``nn.Linear`` (``ModelBundle.classifier``).

    For class targets the weights are the classifier's rows. For a callable target ``f`` they are
    ``(df/dlogits) W``, the exact generalisation through the linear head (a one-hot ``df/dlogits`` gives
    the row back). With a GAP+FC head, CAM equals un-rectified Grad-CAM times ``h*w``.
    """

    name = "cam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        classifier: str | None = None,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        relu: bool = True,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, relu=relu, autocast=autocast)
        self.layer = _single_layer(self.layers, "CAM")
        if not classifier:
            raise ValueError(
                "CAM needs a GAP+FC model: pass classifier=<name of the final nn.Linear>, or use "
                "gradcam, gradcampp, layercam, scorecam or fullgrad, which need no such head"
            )
        resolve_layer(model, classifier)
        self.classifier = classifier

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        # Resolved per call, so the explainer follows ``self.model`` if it is swapped (sanity checks).
        head = LinearHeadProbe(self.model, self.classifier)
        with (
            capture_activations(self.model, [self.layer]) as store,
            head.hooks(),
            torch.no_grad(),
            self._autocast(),
        ):
            logits = self.model(images)
        acts = self._spatial(store.activations[self.layer]).float()
        problem = head.problem(acts, logits, loose=self.autocast is not None)
        if problem:
            raise ValueError(
                f"CAM needs a global-average-pool + linear head after the target layer: {problem}; "
                "use gradcam, gradcampp, layercam, scorecam or fullgrad, which need no such head"
            )
        logits = logits.detach().float()
        classes, score_fns = resolve_targets(targets, logits)
        weight = head.module.weight.detach().float()  # [num_classes, C]
        if classes is not None:
            weights = weight[classes]  # [B, K, C]
        else:
            leaf = logits.clone().requires_grad_(True)
            with torch.enable_grad():
                (dlogits,) = torch.autograd.grad(score_fns[0](leaf).sum(), leaf)
            weights = (dlogits @ weight)[:, None]
        maps = torch.einsum("bkc,bchw->bkhw", weights, acts)
        return Explanation(maps=F.relu(maps) if self.relu else maps, logits=logits, classes=classes)


def first_component_scores(matrix: torch.Tensor) -> torch.Tensor:
    """``X v1`` for each ``[n, C]`` matrix of the batch, ``v1`` its first right singular vector (up to sign).

    Computed from the eigendecomposition of the smaller Gram matrix in float64 rather than a batched SVD:
    ``X v1 = sigma1 u1`` with ``u1`` the top eigenvector of ``X X^T``. Same result, and much faster on GPUs,
    where batched SVDs of many small matrices are slow.
    """
    x = matrix.double()
    n, c = x.shape[-2:]
    if n <= c:
        values, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))
        scores = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    else:
        _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
        scores = (x @ vectors[..., -1:]).squeeze(2)
    return scores.to(matrix.dtype)


class EigenCAM(CAMExplainer):
    """Eigen-CAM: ``map = A_centered v1`` with ``v1`` the first right singular vector of the ``[h*w, C]``
    activation matrix (centred per channel over positions when ``center``, as pytorch-grad-cam does).

    An SVD fixes ``v1`` only up to sign; the sign is chosen so that the map correlates positively with the
    channel-summed activation, i.e. the component points towards where the layer is most active.
    """

    name = "eigencam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | Sequence[str],
        center: bool = True,
        reshape: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        relu: bool = True,
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, relu=relu, autocast=autocast)
        self.center = center

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        # Class-agnostic: one decomposition per layer serves every target column.
        images = images.to(self.device)
        with capture_activations(self.model, self.layers) as store, torch.no_grad(), self._autocast():
            logits = self.model(images)
        classes, score_fns = resolve_targets(targets, logits)
        with self._full_precision():
            acts = [self._spatial(store.activations[name]).float() for name in self.layers]
            maps = merge_layers([self.combine(a, None, logits.new_zeros(len(a))) for a in acts])
        maps = maps[:, None].expand(-1, len(score_fns), -1, -1).contiguous()
        return Explanation(maps=maps, logits=logits.detach().float(), classes=classes)

    def combine(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, scores: torch.Tensor
    ) -> torch.Tensor:
        b, _, h, w = activations.shape
        matrix = torch.nan_to_num(activations).flatten(2).transpose(1, 2)  # [B, hw, C]
        if self.center:
            matrix = matrix - matrix.mean(dim=1, keepdim=True)
        projection = first_component_scores(matrix)  # [B, hw]
        energy = activations.sum(1).flatten(1)
        agreement = (projection - projection.mean(1, keepdim=True)) * (energy - energy.mean(1, keepdim=True))
        sign = torch.where(agreement.sum(1) < 0, -1.0, 1.0)[:, None]
        cam = (projection * sign).view(b, h, w)
        return F.relu(cam) if self.relu else cam
