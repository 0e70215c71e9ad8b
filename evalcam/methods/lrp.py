"""Layer-wise Relevance Propagation (Bach et al. 2015) through zennit (Anders et al. 2021).

Captum's ``LRP`` (still reachable as ``captum/LRP``) has rules only for Conv/Linear/pooling and treats
every other layer as an error or a plain gradient; it has no BatchNorm handling and no rules for ReLU6/SiLU
networks such as EfficientNet. zennit covers them:

- BatchNorm layers that directly follow a convolution or linear layer in the forward pass are merged into
  it for the duration of the call (zennit's ``MergeBatchNorm`` canonizer; the pairs are found by tracing one
  forward pass, since EfficientNet's blocks are not ``nn.Sequential`` chains);
- activations (ReLU, ReLU6, SiLU, ...) pass relevance through unchanged (zennit's ``Pass`` rule);
- ``composite="epsilon_plus_flat"`` (default): flat rule on the first layer, z+ on convolutions, epsilon on
  dense layers; ``"epsilon_gamma_box"``: z^B (box bounds from the input normalisation) on the first layer,
  gamma on convolutions, epsilon on dense layers (Kohlbrenner et al. 2020 / Montavon et al. 2019).

The map is the channel sum of the input relevance (relevance is conservative, so its sum is the explained
score up to the absorbed biases and epsilons). A model with a parametrised layer that has no rule
(LayerNorm, attention, a BatchNorm that follows no linear layer) is refused with a one-line error naming it.
zennit is a base dependency (``pyproject.toml``); a missing install gets a one-line error with the fix.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from evalcam.methods.base import Explainer, Explanation, Targets, resolve_targets
from evalcam.methods.captum_methods import reduce_channels, structure_key
from evalcam.methods.hooks import forward_hooks

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box")
ALTERNATIVES = "gradcam, integrated_gradients, input_x_gradient, smoothgrad or deeplift"


def _zennit() -> Any:
    try:
        return importlib.import_module("zennit")
    except ImportError as err:
        raise ImportError("method lrp needs zennit: pip install zennit") from err


def batchnorm_pairs(model: nn.Module, images: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(linear, batchnorm) pairs where the BatchNorm's input is exactly the linear layer's output, found by
    one traced forward pass (module tree order does not tell, e.g. EfficientNet's ``_bn0`` siblings)."""
    linear_types = (nn.modules.conv._ConvNd, nn.Linear)
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        produced[id(output)] = (module, output)  # the tensor is kept so its id stays unique

    def match(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        source = produced.get(id(inputs[0]))
        if source is not None and source[1] is inputs[0]:
            pairs.append((source[0], module))

    hooks = []
    for module in model.modules():
        if isinstance(module, linear_types):
            hooks.append((module, record))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            hooks.append((module, match))
    with forward_hooks(hooks), torch.no_grad():
        model(images[:1])
    return pairs


def unsupported_layer(model: nn.Module, merged: set[int]) -> tuple[str, str] | None:
    """(name, type) of the first layer with parameters that no zennit rule covers, else None."""
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) in merged:
            continue
        return name, type(module).__name__
    return None


class LRP(Explainer):
    name = "lrp"

    def __init__(
        self,
        model: nn.Module,
        composite: str = "epsilon_plus_flat",
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        reduce: str = "sum",
        autocast: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(model, autocast)
        _zennit()
        if composite not in COMPOSITES:
            raise ValueError(f"lrp composite must be one of {', '.join(COMPOSITES)}, got {composite!r}")
        if self.autocast is not None:
            raise ValueError("lrp runs in full precision (zennit's rules divide by small denominators)")
        self.composite, self.epsilon, self.gamma, self.reduce = (
            composite,
            float(epsilon),
            float(gamma),
            reduce,
        )
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        # model -> (structure_key, traced (linear, BatchNorm) pairs): the pairs depend on the model's modules
        # only, and the trace costs a forward pass per call. Weak keys: a freed model takes its entry along.
        self._pairs: weakref.WeakKeyDictionary[
            nn.Module, tuple[tuple[int, ...], list[tuple[nn.Module, nn.Module]]]
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        # Transformers (LayerNorm, attention) have no rule; BatchNorms are checked per call, where the trace
        # shows whether each follows a linear layer it can be merged into.
        return not any(isinstance(m, nn.LayerNorm | nn.MultiheadAttention) for m in model.modules())

    def _composite(self, pairs: list[tuple[nn.Module, nn.Module]]) -> Any:
        composites = importlib.import_module("zennit.composites")
        canonizers = importlib.import_module("zennit.canonizers")

        class PairedMergeBatchNorm(canonizers.MergeBatchNorm):
            """Merges the traced (linear, BatchNorm) pairs; zennit undoes each merge on exit."""

            def apply(self, root_module: nn.Module) -> list:
                instances = []
                for linear, norm in pairs:
                    instance = PairedMergeBatchNorm()
                    instance.register([linear], norm)
                    instances.append(instance)
                return instances

        canonizer = [PairedMergeBatchNorm()]
        if self.composite == "epsilon_gamma_box":
            low = ((0.0 - self.mean) / self.std).to(self.device)
            high = ((1.0 - self.mean) / self.std).to(self.device)
            return composites.EpsilonGammaBox(
                low=low, high=high, epsilon=self.epsilon, gamma=self.gamma, canonizers=canonizer
            )
        return composites.EpsilonPlusFlat(epsilon=self.epsilon, canonizers=canonizer)

    def explain(self, images: torch.Tensor, targets: Targets) -> Explanation:
        images = images.to(self.device)
        key = structure_key(self.model)
        cached = self._pairs.get(self.model)
        if cached is None or cached[0] != key:
            cached = (key, batchnorm_pairs(self.model, images))
            self._pairs[self.model] = cached
        pairs = cached[1]
        bad = unsupported_layer(self.model, {id(norm) for _, norm in pairs})
        if bad is not None:
            raise ValueError(
                f"lrp cannot explain this model: layer {bad[0]!r} ({bad[1]}) has no LRP rule in zennit or "
                f"Captum; use {ALTERNATIVES} instead"
            )
        columns: list[torch.Tensor] = []
        logits, classes, score_fns = None, None, None
        # One modified forward per column (zennit's rule hooks keep per-forward state); the first one also
        # gives the logits, which merged BatchNorms and LRP rules (backward-only) leave unchanged.
        while score_fns is None or len(columns) < len(score_fns):
            x = images.detach().requires_grad_(True)
            with self._composite(pairs).context(self.model) as modified, torch.enable_grad():
                out = modified(x)
                if score_fns is None:
                    logits = out.detach().float()
                    classes, score_fns = resolve_targets(targets, logits)
                relevance = torch.autograd.grad(score_fns[len(columns)](out).sum(), x)[0]
            columns.append(reduce_channels(relevance.float(), self.reduce))
        assert logits is not None
        return Explanation(maps=torch.stack(columns, 1), logits=logits, classes=classes)
