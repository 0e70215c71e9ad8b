"""Captum attributions by name, behind evalcam's explainer API (not re-implemented: Captum computes them).

One adapter, :class:`CaptumAttribution`, turns Captum's per-pixel attributions ``[B, 3, H, W]`` into evalcam
maps ``[B, K, H, W]`` (input resolution) for every target spec of :mod:`evalcam.methods.base`:

- channel reduction ``reduce``: ``"sum"`` (``sum_c a_c``, signed; the default) or ``"abs_sum"``
  (``sum_c |a_c|``). LATEC (Klein et al., NeurIPS 2024 D&B) keeps the three-channel attributions and, where
  its evaluation needs one value per pixel (ROAD in ``src/modules/eval_methods.py``), takes the signed
  channel mean, which ranks pixels exactly as the signed sum does; hence ``"sum"`` is the default.
- class targets go to Captum's ``target=`` (one Captum call per target column, the whole batch at once);
  callable targets ``f(logits) -> [B]`` become the forward function ``x -> f(model(x))``.
- methods that draw random numbers (SmoothGrad, Expected Gradients, LIME, KernelSHAP) run image by image,
  each under ``torch.random.fork_rng`` seeded with ``seed``: a map depends only on its image and the seed,
  never on the batch it came in or on global RNG state.

Named methods and the papers whose defaults they take (``conf/method/<name>.yaml``):

- ``integrated_gradients``: Sundararajan et al. 2017; ``n_steps=50`` (Gauss-Legendre), baseline 0.
- ``smoothgrad``: Smilkov et al. 2017, NoiseTunnel over Saliency; ``nt_samples=50``, noise
  ``sigma = noise_level * (x_max - x_min)`` with ``noise_level=0.15`` (the paper's 10-20 %), signed gradients.
- ``input_x_gradient``: Shrikumar et al. 2016, ``x * dS/dx``.
- ``deeplift``: Shrikumar et al. 2017 (Rescale rule), baseline 0.
- ``deepliftshap``: Lundberg & Lee 2017, DeepLIFT averaged over a baseline distribution.
- ``expected_gradients``: Erion et al. 2021 (Captum's GradientShap): ``n_samples`` random (baseline, alpha)
  pairs per image.
- ``kernelshap`` / ``lime``: Lundberg & Lee 2017 / Ribeiro et al. 2016 over SLIC superpixels
  (Achanta et al. 2012, scikit-image), as LATEC does: ``n_segments`` superpixels, ``n_samples`` perturbations.

Baselines are values in the network's input space: ``0.0`` is the mean colour for normalised inputs (the
same convention as occlusion's ``fill``). The baseline *distribution* of DeepLiftSHAP and Expected Gradients
is ``num_baselines`` images drawn once from N(0, 1) in that space with ``seed`` (the papers sample training
images; none are available at run time, and a batch-dependent reference set would make maps depend on the
batch they came in).

``captum/<ClassName>`` runs any other Captum attribution class (``captum/Deconvolution``,
``captum/ShapleyValueSampling``, ``captum/LayerGradCam`` ...): ``init`` holds constructor arguments,
everything else goes to ``attribute``; layer attributions get ``target_layer`` as their ``layer``.
"""

from __future__ import annotations

import importlib
import inspect
import random
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from evalcam.methods.base import Explainer, Explanation, Targets, TopK, resolve_targets
from evalcam.methods.deeplift_twin import count_calls, unshare_activations
from evalcam.models.layers import resolve_layer

PREFIX = "captum/"
REDUCTIONS = ("sum", "abs_sum")


def _captum() -> Any:
    try:
        return importlib.import_module("captum.attr")
    except ImportError as err:
        raise ImportError("Captum-backed methods need captum: pip install captum") from err


def attribution_classes() -> dict[str, type]:
    """Captum's attribution classes (subclasses of ``captum.attr.Attribution``) by name."""
    library = _captum()
    return {
        name: obj
        for name, obj in vars(library).items()
        if inspect.isclass(obj) and issubclass(obj, library.Attribution) and not inspect.isabstract(obj)
    }


def reduce_channels(attributions: torch.Tensor, reduce: str) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H, W]``: ``sum`` = sum_c a_c, ``abs_sum`` = sum_c |a_c|."""
    if reduce == "abs_sum":
        attributions = attributions.abs()
    return attributions.sum(1)


def gaussian_baselines(num: int, shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """``num`` reference images from N(0, 1) in the (normalised) input space, the same for every image."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num, *shape, generator=generator).to(device)


def slic_masks(images: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """SLIC superpixels per image as Captum feature masks ``[B, 1, H, W]`` (labels from 0), computed on each
    image rescaled to [0, 1] so SLIC's colour distance does not depend on the input normalisation."""
    from skimage.segmentation import slic

    masks = []
    for image in images.detach().float().cpu():
        low, high = image.amin(), image.amax()
        rgb = ((image - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0).numpy()
        labels = slic(rgb, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
        masks.append(torch.from_numpy(np.ascontiguousarray(labels)).long())
    return torch.stack(masks)[:, None].to(images.device)


class _Scored(nn.Module):
    """``x -> f(model(x))`` as a module (DeepLift hooks into its forward function's modules)."""

    def __init__(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model(x))


class _Recorder(nn.Module):
    """``model`` that keeps (detached) the output of its first call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.first = model, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.first is None:
            self.first = out.detach()
        return out


class CaptumAttribution(Explainer):
    """Adapter: ``captum_class`` names a Captum attribution class; ``init`` its constructor arguments;
    ``**attribute_kwargs`` go to its ``attribute``. See the module docstring for targets and reduction."""

    captum_class: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    # DeepLift keeps state on each activation module: reused modules get one copy per use.
    unshare: ClassVar[bool] = False
    # Captum's first forward pass is on the unmodified batch (its output are the logits).
    clean_forward: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        captum_class: str | None = None,
        reduce: str = "sum",
        seed: int = 0,
        target_layer: str | None = None,
        init: dict[str, Any] | None = None,
        autocast: torch.dtype | str | None = None,
        **attribute_kwargs: Any,
    ) -> None:
        super().__init__(model, autocast)
        name = captum_class or self.captum_class
        classes = attribution_classes()
        if name not in classes:
            raise ValueError(
                f"Captum has no attribution class {name!r}; available: {', '.join(sorted(classes))}"
            )
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        self.cls = classes[name]
        if captum_class is not None:
            self.name = PREFIX + name
        self.reduce, self.seed, self.init = reduce, int(seed), dict(init or {})
        self.needs_layer = "layer" in inspect.signature(self.cls.__init__).parameters
        if self.needs_layer:
            if not target_layer:
                raise ValueError(f"captum/{name} is a layer attribution: set method.params.target_layer")
            resolve_layer(model, target_layer)
        self.target_layer = target_layer
        self.attribute_kwargs = attribute_kwargs
        self._num_classes: dict[int, int] = {}  # id(model) -> classes, for the recorded-logits path

    # --- hooks for the named subclasses ---------------------------------------------------------------

    def attribute_arguments(self, images: torch.Tensor) -> dict[str, Any]:
        """Extra ``attribute`` arguments that depend on the images (baselines, noise, feature masks)."""
        return {}

    # --- the adapter ----------------------------------------------------------------------------------

    def _attributor(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        # Built per call, so it always wraps the current ``self.model`` (metrics swap models) and
        # Captum's hooks live only for that call.
        args: list[Any] = [forward]
        if self.needs_layer:
            args.append(resolve_layer(self.model, self.target_layer or ""))
        return self.cls(*args, **self.init)

    def _call(self, forward: Callable, images: torch.Tensor, target: Any) -> torch.Tensor:
        kwargs = {**self.attribute_arguments(images), **self.attribute_kwargs}
        with self._autocast():
            result = self._attributor(forward).attribute(images, target=target, **kwargs)
        if isinstance(result, tuple):  # return_convergence_delta=True
            result = result[0]
        return result.detach().float()

    def _seeded(self, forward: Callable, images: torch.Tensor, target: Any) -> torch.Tensor:
        # Captum draws from torch's, NumPy's (GradientShap) and Python's RNGs: all three are seeded for the
        # call and restored afterwards, so the caller's global RNG state is untouched.
        devices = [images.device.index or 0] if images.device.type == "cuda" else []
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                np.random.seed(self.seed)
                random.seed(self.seed)
                return self._call(forward, images, target)
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)

    def attributions(
        self, images: torch.Tensor, target: torch.Tensor | None, forward: Callable
    ) -> torch.Tensor:
        """Captum's raw attributions for one target column (``target`` ``[B]`` or None for callables)."""
        if not self.stochastic:
            return self._call(forward, images, target)
        per_image = []
        for i in range(images.shape[0]):
            one = None if target is None else int(target[i])
            per_image.append(self._seeded(forward, images[i : i + 1], one))
        return torch.cat(per_image)

    def _explain_recording_logits(self, images: torch.Tensor, targets: Targets) -> Explanation | None:
        """Class-index targets with a method whose Captum forward is the clean batch itself: the logits
        are read from that forward instead of a pass of their own (Input x Gradient costs one forward and
        one backward, so a separate logits pass would add half of it). None when this does not apply."""
        if not self.clean_forward or isinstance(targets, TopK) or callable(targets):
            return None
        classes = torch.as_tensor(targets, device=images.device, dtype=torch.long)
        if classes.ndim == 0:
            classes = classes.expand(images.shape[0])
        classes = classes[:, None] if classes.ndim == 1 else classes
        # Targets are checked before Captum indexes with them (on CUDA a bad index is a device-side
        # assert, not an exception): against the class count seen on this model by an earlier call; the
        # first call on a model takes the ordinary path, which checks them against its own logits.
        known = self._num_classes.get(id(self.model))
        if (
            known is None
            or classes.shape[0] != images.shape[0]
            or not bool(((classes >= 0) & (classes < known)).all())
        ):
            return None
        recorder = _Recorder(self.model)
        first = self.attributions(images, classes[:, 0], recorder)
        assert recorder.first is not None
        logits = recorder.first.float()
        classes, _ = resolve_targets(targets, logits)
        assert classes is not None
        columns = [reduce_channels(first, self.reduce)]
        for k in range(1, classes.shape[1]):
            columns.append(reduce_channels(self.attributions(images, classes[:, k], self.model), self.reduce))
        self.model.zero_grad(set_to_none=True)
        return Explanation(maps=torch.stack(columns, 1), logits=logits, classes=classes)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        recorded = self._explain_recording_logits(images, targets)
        if recorded is not None:
            return recorded
        model = self.model
        with torch.no_grad(), self._autocast():
            if self.unshare:  # the logits pass also counts the calls of each activation module
                logits, counts = count_calls(self.model, images)
                model = unshare_activations(self.model, counts=counts)
            else:
                logits = self.model(images)
        logits = logits.float()
        self._num_classes = {id(self.model): logits.shape[1]}
        classes, score_fns = resolve_targets(targets, logits)
        columns = []
        for fn in score_fns:
            if classes is not None:
                raw = self.attributions(images, classes[:, len(columns)], model)
            else:
                raw = self.attributions(images, None, _Scored(model, fn))
            if raw.ndim == 3:  # a single-channel layer attribution may come back without a channel axis
                raw = raw[:, None]
            columns.append(reduce_channels(raw, self.reduce))
        self.model.zero_grad(set_to_none=True)
        return Explanation(maps=torch.stack(columns, 1), logits=logits, classes=classes)


class IntegratedGradients(CaptumAttribution):
    name = "integrated_gradients"
    captum_class = "IntegratedGradients"

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        baseline: float = 0.0,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            n_steps=n_steps,
            baselines=baseline,
            method=method,
            internal_batch_size=internal_batch_size,
            **kwargs,
        )


class SmoothGrad(CaptumAttribution):
    name = "smoothgrad"
    captum_class = "NoiseTunnel"
    stochastic = True

    def __init__(
        self, model: nn.Module, nt_samples: int = 50, noise_level: float = 0.15, **kwargs: Any
    ) -> None:
        super().__init__(model, nt_type="smoothgrad", nt_samples=nt_samples, abs=False, **kwargs)
        self.noise_level = float(noise_level)

    def _attributor(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        return self.cls(_captum().Saliency(forward))

    def attribute_arguments(self, images: torch.Tensor) -> dict[str, Any]:
        # One image per call (stochastic), so sigma is that image's own range.
        return {"stdevs": self.noise_level * float(images.amax() - images.amin())}


class InputXGradient(CaptumAttribution):
    name = "input_x_gradient"
    captum_class = "InputXGradient"
    clean_forward = True


class DeepLift(CaptumAttribution):
    name = "deeplift"
    captum_class = "DeepLift"
    unshare = True

    def __init__(self, model: nn.Module, baseline: float = 0.0, eps: float = 1e-10, **kwargs: Any) -> None:
        super().__init__(model, baselines=baseline, init={"eps": eps}, **kwargs)


class _DistributionBaselines(CaptumAttribution):
    def __init__(self, model: nn.Module, num_baselines: int = 10, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(model, seed=seed, **kwargs)
        if num_baselines < 2:
            raise ValueError(f"{self.name} needs num_baselines >= 2 (a distribution), got {num_baselines}")
        self.num_baselines = int(num_baselines)

    def attribute_arguments(self, images: torch.Tensor) -> dict[str, Any]:
        # Drawn once per (shape, device), not per image: the same references for every call.
        key = (tuple(images.shape[1:]), images.device)
        if getattr(self, "_baselines", (None, None))[0] != key:
            self._baselines = (key, gaussian_baselines(self.num_baselines, key[0], self.seed, images.device))
        return {"baselines": self._baselines[1]}


class DeepLiftShap(_DistributionBaselines):
    name = "deepliftshap"
    captum_class = "DeepLiftShap"
    unshare = True


class ExpectedGradients(_DistributionBaselines):
    name = "expected_gradients"
    captum_class = "GradientShap"
    stochastic = True

    def __init__(self, model: nn.Module, n_samples: int = 50, stdevs: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, n_samples=n_samples, stdevs=stdevs, **kwargs)


class _Superpixels(CaptumAttribution):
    stochastic = True

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 300,
        n_segments: int = 50,
        compactness: float = 10.0,
        baseline: float = 0.0,
        perturbations_per_eval: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            n_samples=n_samples,
            baselines=baseline,
            perturbations_per_eval=perturbations_per_eval,
            **kwargs,
        )
        self.n_segments, self.compactness = int(n_segments), float(compactness)

    def attribute_arguments(self, images: torch.Tensor) -> dict[str, Any]:
        mask = slic_masks(images, self.n_segments, self.compactness)
        found = int(mask.max()) + 1
        if found < 2:  # one feature: KernelSHAP's kernel weights and LIME's regression are undefined
            raise ValueError(
                f"{self.name}: SLIC found {found} superpixel in a "
                f"{images.shape[-2]}x{images.shape[-1]} image; "
                f"raise n_segments (now {self.n_segments}) or lower compactness (now {self.compactness})"
            )
        return {"feature_mask": mask.expand(-1, images.shape[1], -1, -1)}


class KernelShap(_Superpixels):
    name = "kernelshap"
    captum_class = "KernelShap"


class Lime(_Superpixels):
    name = "lime"
    captum_class = "Lime"
