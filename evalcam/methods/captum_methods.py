"""Captum attributions by name, behind evalcam's explainer API (not re-implemented: Captum computes them).

One adapter, :class:`CaptumAttribution`, turns Captum's per-pixel attributions ``[B, 3, H, W]`` into evalcam
maps ``[B, K, H, W]`` (input resolution) for every target spec of :mod:`evalcam.methods.base`:

- channel reduction ``reduce``: ``"sum"`` (``sum_c a_c``, signed; the default) or ``"abs_sum"``
  (``sum_c |a_c|``). LATEC (Klein et al., NeurIPS 2024 D&B) keeps the three-channel attributions and, where
  its evaluation needs one value per pixel (ROAD in ``src/modules/eval_methods.py``), takes the signed
  channel mean, which ranks pixels exactly as the signed sum does; hence ``"sum"`` is the default.
- class targets go to Captum's ``target=`` (one Captum call per target column, the whole batch at once);
  callable targets ``f(logits) -> [B]`` become the forward function ``x -> f(model(x))``.
- the logits (and top-k classes) of Input x Gradient, DeepLIFT and DeepLiftSHAP are read from the first
  forward pass Captum makes anyway, which holds the clean batch (:class:`_CleanPass`); the other methods
  never pass the clean batch and make one no-grad logits pass of their own before Captum runs.
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
import weakref
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


def structure_key(model: nn.Module) -> tuple[int, ...]:
    """Identity of ``model``'s modules, parameters and buffers (objects, not values): what a structure-derived
    cache (DeepLift's twin, LRP's BatchNorm pairs) depends on. In-place weight changes keep it."""
    return tuple(id(t) for t in (*model.modules(), *model.parameters(), *model.buffers()))


class _Scored(nn.Module):
    """``x -> f(model(x))`` as a module (DeepLift hooks into its forward function's modules)."""

    def __init__(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model(x))


class _CleanPass(nn.Module):
    """``model`` seen through Captum's own forward passes: it keeps the logits of the clean batch from the
    first pass that contains it, so no separate logits pass is needed.

    Captum's first pass of Input x Gradient is the batch itself, DeepLift's is ``cat(batch, baselines)`` and
    DeepLiftShap's ``cat(batch.repeat_interleave(r), baselines.repeat(B))`` with ``r`` baselines: in all
    three, row ``j`` of a pass belongs to image ``(j mod B*r) // r`` and rows ``r*i`` are the clean images
    (checked with ``torch.equal``, not assumed). ``classes`` known: the pass is returned unchanged (Captum
    indexes it with ``target=``), after checking the classes against the model's class count, before Captum
    indexes with them (on CUDA a bad index is a device-side assert, not an exception). ``top_k`` instead:
    the classes are the top-k of the recorded logits, and the pass returns each row's score for its image's
    class ``column`` (Captum then runs with ``target=None``), which has the same gradient as Captum's
    indexing. A first pass without the clean rows falls back to a separate logits pass: exact, never guessed.
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        repeat: int,
        classes: torch.Tensor | None = None,
        top_k: TopK | None = None,
    ) -> None:
        super().__init__()
        self.model, self.images, self.repeat = model, images, repeat
        self.classes, self.top_k = classes, top_k
        self.logits: torch.Tensor | None = None

    def _record(self, x: torch.Tensor, out: torch.Tensor) -> None:
        batch = self.images.shape[0]
        rows = torch.arange(batch, device=x.device) * self.repeat
        if x.shape[0] >= batch * self.repeat and torch.equal(x[rows], self.images):
            self.logits = out[rows].detach().float()
        else:
            with torch.no_grad():
                self.logits = self.model(self.images).detach().float()
        if self.classes is None:
            assert self.top_k is not None
            self.classes, _ = resolve_targets(self.top_k, self.logits)
        else:
            resolve_targets(self.classes, self.logits)  # the one-line range / batch-size error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.logits is None:
            self._record(x, out)
        if self.top_k is None:
            return out
        assert self.classes is not None
        batch = self.images.shape[0]
        image = (torch.arange(x.shape[0], device=x.device) % (batch * self.repeat)) // self.repeat
        return out.gather(1, self.classes[image, :1]).squeeze(1)


class CaptumAttribution(Explainer):
    """Adapter: ``captum_class`` names a Captum attribution class; ``init`` its constructor arguments;
    ``**attribute_kwargs`` go to its ``attribute``. See the module docstring for targets and reduction."""

    captum_class: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    # DeepLift keeps state on each activation module: reused modules get one copy per use.
    unshare: ClassVar[bool] = False
    # Captum's first pass holds the clean batch (see _CleanPass): its logits are read there.
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
        # model -> (structure_key, its DeepLift twin): the twin depends only on the modules and the tensor
        # objects it shares, and the counting pass that builds it would cost a forward per call. Rebuilt when
        # a module or parameter object is replaced; weak keys: a freed model takes its twin with it.
        self._twins: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], nn.Module | None]] = (
            weakref.WeakKeyDictionary()
        )

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

    def clean_repeat(self) -> int:
        """How often Captum's first pass repeats each clean image (see :class:`_CleanPass`)."""
        return 1

    def _model(self, images: torch.Tensor) -> nn.Module:
        if not self.unshare:
            return self.model
        key = structure_key(self.model)
        cached = self._twins.get(self.model)
        if cached is None or cached[0] != key:
            twin = unshare_activations(self.model, counts=count_calls(self.model, images[:1])[1])
            # None for "the model itself": a value referring to its own weak key would keep it alive.
            cached = (key, None if twin is self.model else twin)
            self._twins[self.model] = cached
        return cached[1] or self.model

    def _explain_clean_pass(self, images: torch.Tensor, targets: Targets) -> Explanation:
        """Class or top-k targets with a method whose first Captum pass holds the clean batch: the logits
        come from that pass (Input x Gradient costs one forward and one backward, DeepLift one of each on
        twice the batch, so a logits pass of its own would add a sixth to a half of the time)."""
        model = self._model(images)
        if isinstance(targets, TopK):
            clean = _CleanPass(model, images, self.clean_repeat(), top_k=targets)
            first = self.attributions(images, None, clean)
        else:
            classes = torch.as_tensor(targets, device=images.device, dtype=torch.long)
            classes = classes.expand(images.shape[0]) if classes.ndim == 0 else classes
            classes = classes[:, None] if classes.ndim == 1 else classes
            if classes.shape[0] != images.shape[0]:
                raise ValueError(f"got {classes.shape[0]} targets for a batch of {images.shape[0]} images")
            clean = _CleanPass(model, images, self.clean_repeat(), classes=classes)
            first = self.attributions(images, classes[:, 0], clean)
        assert clean.logits is not None and clean.classes is not None
        classes = clean.classes
        columns = [reduce_channels(first, self.reduce)]
        for k in range(1, classes.shape[1]):
            columns.append(reduce_channels(self.attributions(images, classes[:, k], model), self.reduce))
        self.model.zero_grad(set_to_none=True)
        return Explanation(maps=torch.stack(columns, 1), logits=clean.logits, classes=classes)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        if (
            self.clean_forward
            and not self.stochastic
            and not self.needs_layer
            and not (callable(targets) and not isinstance(targets, torch.Tensor | TopK))
        ):
            return self._explain_clean_pass(images, targets)
        model = self._model(images)
        with torch.no_grad(), self._autocast():
            logits = self.model(images)
        logits = logits.float()
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
    clean_forward = True

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
    clean_forward = True

    def clean_repeat(self) -> int:
        return self.num_baselines


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
