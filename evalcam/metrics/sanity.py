"""Cascading model-parameter randomization (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018,
Sec. 3.1): an explanation that stays the same while the model it explains is destroyed does not explain
the model.

From the top of the network (the logits) down, layers of a seeded deep copy of the model are
re-initialized cumulatively; after each step the maps of the same targets (the clean model's top-1
classes) are recomputed on the randomized copy and compared with the original maps by Spearman rank
correlation at map resolution. ``step_<k>_<layer>`` is the mean correlation after the ``k`` top-most
layers (``layer`` the last one randomized) have been re-initialized; it should fall quickly towards 0.

- **Layers**: ``layers`` (top first), or by default the model's parameterized top-level children in
  reverse definition order, with ``Sequential``/``ModuleList`` children expanded one level (EfficientNet:
  ``fc, bn1, conv_head, blocks.15, ..., blocks.0, bn0, conv_stem``); ``steps`` keeps only the first few.
- **Re-initialization**: each module's own ``reset_parameters()`` (PyTorch's default initializers; batch
  norm also resets its running statistics), run on CPU under ``torch.manual_seed(seed + k)`` for the
  ``k``-th layer, so the randomized copy is the same for every batch and on every device. Parameters of
  modules without ``reset_parameters`` are redrawn from N(0, 0.02).
- **Explainer**: rebuilt on the randomized copy. An explainer made by ``evalcam.methods.build_explainer``
  (every run's) carries its ``recipe`` (method name and params) and is built again from it on the copy,
  so nothing it derived from the original model survives; an explainer constructed directly is
  shallow-copied and every attribute that refers to the original model, one of its submodules or
  parameters is re-pointed to its counterpart in the copy (a ``CAMExplainer`` keeps only the model and
  layer *names*, so this is exact for it).
- **Degenerate maps**: a constant or non-finite map (original or randomized) scores 0 and is counted in
  ``degenerate_maps`` per step (:mod:`evalcam.metrics.stats`).

At most 64 cascade steps are stored. The layer names travel in the state too (their UTF-8 bytes, at
most 32 per name, summed once per batch next to a batch count), so merged or resumed states still name
their steps.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.perturbed_scores import model_of
from evalcam.metrics.stats import spearman
from evalcam.models.layers import resolve_layer
from evalcam.stats.aggregation import Aggregation, Mean

MAX_STEPS = 64
NAME_BYTES = 32


def encode_names(names: Sequence[str]) -> torch.Tensor:
    """``[MAX_STEPS, NAME_BYTES]`` int32 UTF-8 codes of the layer names, zero padded."""
    codes = torch.zeros(MAX_STEPS, NAME_BYTES, dtype=torch.int32)
    for k, name in enumerate(names):
        raw = name.encode()[:NAME_BYTES]
        codes[k, : len(raw)] = torch.tensor(list(raw), dtype=torch.int32)
    return codes


def decode_names(codes: torch.Tensor) -> list[str]:
    names = []
    for row in codes.tolist():
        raw = bytes(b for b in row if b)
        names.append(raw.decode(errors="replace"))
    return names


def cascade_layers(model: nn.Module) -> list[str]:
    """Default cascade, top first: parameterized children, containers expanded one level."""
    units: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential | nn.ModuleList):
            units += [f"{name}.{sub}" for sub, grand in child.named_children() if _has_params(grand)]
        elif _has_params(child):
            units.append(name)
    return units[::-1]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def reinitialize(module: nn.Module, seed: int) -> None:
    """Re-draw every parameter of ``module`` (and reset batch-norm statistics), reproducibly on CPU."""
    cpu = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        covered: set[int] = set()
        for sub in cpu.modules():
            if hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
                sub.reset_parameters()
                covered.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for p in cpu.parameters():
                if id(p) not in covered:
                    p.normal_(0.0, 0.02)
    module.load_state_dict(cpu.state_dict())


def rebind_explainer(explainer: Any, old: nn.Module, new: nn.Module) -> Any:
    """Shallow copy of ``explainer`` whose references into ``old`` point at the same objects in ``new``."""
    clone = copy.copy(explainer)
    modules = {id(m): name for name, m in old.named_modules()}
    params = {id(p): name for name, p in old.named_parameters()}
    new_modules = dict(new.named_modules())
    new_params = dict(new.named_parameters())
    for attr, value in vars(explainer).items():
        if isinstance(value, nn.Parameter) and id(value) in params:
            setattr(clone, attr, new_params[params[id(value)]])
        elif isinstance(value, nn.Module) and id(value) in modules:
            setattr(clone, attr, new_modules[modules[id(value)]])
    return clone


def explainer_on(batch: EvalBatch, original: nn.Module, randomized: nn.Module) -> Any:
    """The batch's method on ``randomized``: rebuilt from the explainer's ``recipe`` when it has one,
    else :func:`rebind_explainer` (an explainer constructed directly)."""
    recipe = getattr(batch.explainer, "recipe", None)
    if recipe is not None and batch.bundle is not None:
        from evalcam.methods import build_explainer

        name, params = recipe
        return build_explainer(name, dataclasses.replace(batch.bundle, model=randomized), **params)
    return rebind_explainer(batch.explainer, original, randomized)


class CascadingRandomization(Metric):
    name = "sanity"
    # A method passes the sanity check when its maps change once the weights are randomized.
    higher_is_better: ClassVar[dict[str, bool]] = {"final_spearman": False}
    pred_topk = 1

    def __init__(
        self,
        device: torch.device | str = "cpu",
        layers: Sequence[str] | None = None,
        steps: int | None = None,
        seed: int | None = 0,  # None: not resolved from the run's seed (evalcam.stats.seed); 0
    ) -> None:
        super().__init__(device)
        self.layers = list(layers) if layers else None
        self.steps = None if steps is None else int(steps)
        self.seed = int(seed or 0)
        for state in ("spearman_sum", "count", "degenerate"):
            self.add_state(state, torch.zeros(MAX_STEPS, dtype=torch.float64))
        self.add_state("name_codes", torch.zeros(MAX_STEPS, NAME_BYTES, dtype=torch.int32))
        self.add_state("batches", torch.zeros((), dtype=torch.int32))

    def cascade(self, model: nn.Module) -> list[str]:
        names = self.layers or cascade_layers(model)
        if self.steps is not None:
            names = names[: self.steps]
        if len(names) > MAX_STEPS:
            raise ValueError(
                f"{len(names)} cascade steps exceed the {MAX_STEPS} this metric stores; set "
                f"metrics.sanity.steps or metrics.sanity.layers"
            )
        for name in names:
            resolve_layer(model, name)
        return names

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        original = batch.explainer.model if batch.explainer is not None else model_of(batch)
        names = self.cascade(original)
        randomized = copy.deepcopy(original).eval()
        explainer = explainer_on(batch, original, randomized)
        classes = batch.pred_classes[:, 0].to(batch.inputs.device)
        reference = batch.pred_maps[:, 0]
        sums = torch.zeros(MAX_STEPS, dtype=torch.float64)
        counts = torch.zeros(MAX_STEPS, dtype=torch.float64)
        degenerate = torch.zeros(MAX_STEPS, dtype=torch.float64)
        per_image: list[list[float]] = [[] for _ in batch.samples]
        for k, name in enumerate(names):
            reinitialize(resolve_layer(randomized, name), self.seed + k)
            maps = explainer.explain(batch.inputs, classes).maps[:, 0]
            rho, valid = spearman(reference.to(maps.device), maps)
            sums[k] += float(rho.sum())
            counts[k] += len(rho)
            degenerate[k] += float((~valid).sum())
            for i, value in enumerate(rho.tolist()):
                per_image[i].append(value)
        self.spearman_sum = self.spearman_sum + sums.to(self.device)
        self.count = self.count + counts.to(self.device)
        self.degenerate = self.degenerate + degenerate.to(self.device)
        self.name_codes = self.name_codes + encode_names(names).to(self.device)
        self.batches = self.batches + 1
        return [self.record(spearman=values, layers=list(names)) for values in per_image]

    def layer_names(self) -> list[str] | None:
        """Names of the cascade steps, read back from the state (None if batches disagreed)."""
        batches = int(self.batches)
        if batches == 0:
            return None
        codes = self.name_codes.cpu()
        if bool((codes % batches != 0).any()):
            return None  # parts used different cascades: no single name per step
        return decode_names(codes // batches)

    def aggregations(self, keys: Iterable[str]) -> dict[str, Aggregation]:
        # Step k's correlation is element k of each image's list; the final step is the last element.
        out: dict[str, Aggregation] = {}
        for key in keys:
            if key == "final_spearman":
                out[key] = Mean(self.column("spearman"), item=-1)
            elif key.startswith("step_") and key[5:7].isdigit():
                out[key] = Mean(self.column("spearman"), item=int(key[5:7]) - 1)
        return out

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        steps = int((self.count > 0).sum())
        names = self.layer_names()
        for k in range(steps):
            label = f"step_{k + 1:02d}" + (f"_{names[k]}" if names and names[k] else "")
            out[label] = safe_ratio(self.spearman_sum[k], self.count[k])
        if steps:
            out["final_spearman"] = safe_ratio(self.spearman_sum[steps - 1], self.count[steps - 1])
        out["steps"] = float(steps)
        out["degenerate_maps"] = float(self.degenerate.sum())
        return out
