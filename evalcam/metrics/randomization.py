"""Shared machinery of the randomization metrics (eMPRT, sMPRT, random logit): randomized copies of the
model, the explainer rebuilt on a copy, entropy of a map's histogram and 2-D SSIM.

The user's model is never modified: every randomization works on a deep copy. Two schemes:

- ``"cascade"`` (default): the units of :func:`evalcam.metrics.sanity.cascade_layers` (or ``layers``),
  each re-initialized with :func:`evalcam.metrics.sanity.reinitialize` under seed ``seed + k`` for its
  position ``k`` in the top-down cascade, so a unit gets the same weights whatever the order it is
  randomized in;
- ``"quantus"``: Quantus' ``get_random_layer_generator``: every module that has ``reset_parameters``, in
  ``named_modules`` order, each reset under ``torch.manual_seed(seed + 1)`` (the same seed for all), run
  in a forked RNG so the global state is untouched. Offered so Quantus' numbers can be reproduced.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evalcam.metrics.base import EvalBatch
from evalcam.metrics.sanity import cascade_layers, explainer_on, reinitialize
from evalcam.models.layers import resolve_layer

SCHEMES = ("cascade", "quantus")
ORDERS = ("bottom_up", "top_down")


def randomization_steps(
    model: nn.Module,
    seed: int = 0,
    scheme: str = "cascade",
    order: str = "bottom_up",
    layers: Sequence[str] | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(unit name, copy)`` after each cumulative randomization step; one copy is modified in place,
    so take what is needed from it before advancing."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown randomization scheme {scheme!r}; use one of: {', '.join(SCHEMES)}")
    if order not in ORDERS:
        raise ValueError(f"unknown layer order {order!r}; use one of: {', '.join(ORDERS)}")
    randomized = copy.deepcopy(model).eval()
    if scheme == "quantus":
        units = [(name, m) for name, m in randomized.named_modules() if hasattr(m, "reset_parameters")]
        if order == "top_down":
            units = units[::-1]
        for name, module in units:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                module.reset_parameters()
            yield name, randomized
        return
    top_down = list(layers) if layers else cascade_layers(model)
    seeds = {name: seed + k for k, name in enumerate(top_down)}
    for name in top_down if order == "top_down" else top_down[::-1]:
        reinitialize(resolve_layer(randomized, name), seeds[name])
        yield name, randomized


def fully_randomized(
    model: nn.Module, seed: int = 0, scheme: str = "cascade", layers: Sequence[str] | None = None
) -> nn.Module:
    """A copy of ``model`` with every randomization unit re-initialized."""
    steps = list(randomization_steps(model, seed, scheme, "bottom_up", layers))
    if not steps:
        raise ValueError("the model has no parameterized layer to randomize")
    return steps[-1][1]


def model_explainer(batch: EvalBatch, model: nn.Module) -> Any:
    """The batch's method on another model (as the sanity metric: rebuilt from its recipe, else
    re-pointed; see :func:`evalcam.metrics.sanity.explainer_on`)."""
    return explainer_on(batch, batch.explainer.model, model)


def histogram_entropy(maps: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """Shannon entropy (nats) of the ``bins``-bin histogram of each row's values over its own [min, max]
    (``scipy.stats.entropy(np.histogram(a, bins))``, Quantus' ``discrete_entropy``); 0 for a constant row."""
    rows = maps.flatten(1).double()
    lo = rows.amin(1, keepdim=True)
    span = rows.amax(1, keepdim=True) - lo
    index = ((rows - lo) / torch.where(span > 0, span, torch.ones_like(span)) * bins).floor().long()
    counts = torch.zeros(rows.shape[0], bins, dtype=torch.float64, device=rows.device)
    counts.scatter_add_(1, index.clamp(0, bins - 1), torch.ones_like(rows))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean structural similarity of each ``[N, H, W]`` map pair (Wang et al. 2004), with
    ``skimage.metrics.structural_similarity``'s defaults: a ``window`` x ``window`` uniform window over the
    valid positions, sample covariances, K1 = 0.01, K2 = 0.03, data range = max - min over both maps."""
    a, b = a.double()[:, None], b.double()[:, None]
    both = torch.cat([a, b], 1).flatten(1)
    data_range = both.amax(1) - both.amin(1)
    c1 = ((0.01 * data_range) ** 2).view(-1, 1, 1, 1)
    c2 = ((0.03 * data_range) ** 2).view(-1, 1, 1, 1)
    n = window * window
    cov_norm = n / (n - 1)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window, stride=1)

    ua, ub = mean(a), mean(b)
    vaa = cov_norm * (mean(a * a) - ua * ua)
    vbb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (vaa + vbb + c2))
    return s.flatten(1).mean(1)
