"""A function-preserving copy of a model for Captum's DeepLift (Shrikumar et al. 2017).

Captum's DeepLift keeps per-module state, so it refuses an activation module called at several places of
one forward pass (EfficientNet-Lite's shared ``_swish`` ReLU6, a reused ``nn.ReLU``), and it has no rule
for ReLU6 (it would fall back to the plain gradient there). :func:`unshare_activations` returns a copy with
one out-of-place module per call site and ReLU6 rewritten as ``ReLU(x) - ReLU(x - 6)``; parameters and
buffers are shared with the original, not copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from evalcam.methods.hooks import forward_hooks


class _ReLU6AsReLUs(nn.Module):
    """``ReLU6(x) = ReLU(x) - ReLU(x - 6)``: the same function built from the ReLUs DeepLift has a rule for
    (Captum's DeepLift has none for ReLU6 and would fall back to the plain gradient there)."""

    def __init__(self) -> None:
        super().__init__()
        self.low, self.high = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low(x) - self.high(x - 6.0)


def _site(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.ReLU6):
        return _ReLU6AsReLUs()
    site = copy.deepcopy(module)
    if hasattr(site, "inplace"):  # DeepLift's hooks need the activation's input intact
        site.inplace = False
    return site


class _CallSites(nn.Module):
    """Stands in for an activation module called at several places of one forward pass: call ``i`` of a
    pass goes to its own copy ``sites[i]``, so Captum's DeepLift (which keeps per-module state) sees each
    use as a separate module. A forward pre-hook on the root resets the counter at every pass."""

    def __init__(self, module: nn.Module, uses: int) -> None:
        super().__init__()
        self.sites = nn.ModuleList([_site(module) for _ in range(uses)])
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        site = self.sites[self.calls % len(self.sites)]
        self.calls += 1
        return site(x)


def count_calls(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, int]]:
    """One no-grad forward pass; returns its output and how often each parameter-free leaf module ran."""
    counts: dict[int, int] = {}

    def count(module: nn.Module, _inputs: tuple, _output: Any) -> None:
        counts[id(module)] = counts.get(id(module), 0) + 1

    with forward_hooks((m, count) for m in _free_leaves(model)), torch.no_grad():
        output = model(images)
    return output, counts


def _free_leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children()) and not list(m.parameters(recurse=False))]


def unshare_activations(
    model: nn.Module, images: torch.Tensor | None = None, counts: dict[int, int] | None = None
) -> nn.Module:
    """A copy of ``model`` in which every parameter-free leaf module used more than once per forward pass
    (EfficientNet's shared ``_swish`` ReLU6, a reused ``nn.ReLU``) or in place is split into one
    out-of-place copy per use, and every ReLU6 is rewritten as two ReLUs. Same function and weights;
    Captum's DeepLift refuses reused modules and has no ReLU6 rule. ``model`` itself is returned when
    nothing needs changing. Other activations without a DeepLift rule (SiLU, GELU) keep Captum's
    fallback, the plain gradient. ``counts`` (from :func:`count_calls`) saves the counting pass."""
    if counts is None:
        if images is None:
            raise ValueError("unshare_activations needs images or counts")
        counts = count_calls(model, images[:1])[1]
    leaves = _free_leaves(model)
    split = {
        id(m)
        for m in leaves
        if counts.get(id(m), 0) > 1 or getattr(m, "inplace", False) or isinstance(m, nn.ReLU6)
    }
    if not split:
        return model
    # deepcopy keeps module sharing (one copy per shared original); parameters and buffers are shared, not
    # copied, so the twin is cheap and follows in-place weight changes.
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo)
    pairs = zip(
        model.named_modules(remove_duplicate=False), twin.named_modules(remove_duplicate=False), strict=True
    )
    original_of = {id(copied): id(original) for (_, original), (_, copied) in pairs}
    # All slots are listed before any is replaced: new modules must not be visited (or reuse a freed id).
    slots = [
        (parent, child_name, original_of[id(child)])
        for parent in twin.modules()
        for child_name, child in parent.named_children()
        if original_of.get(id(child)) in split
    ]
    dispatchers: dict[int, _CallSites] = {}
    for parent, child_name, original in slots:
        if original not in dispatchers:
            dispatchers[original] = _CallSites(getattr(parent, child_name), max(counts.get(original, 1), 1))
        setattr(parent, child_name, dispatchers[original])

    def reset(_module: nn.Module, _inputs: tuple) -> None:
        for site in dispatchers.values():
            site.calls = 0

    twin.register_forward_pre_hook(reset)
    return twin.eval()
