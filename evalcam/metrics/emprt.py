"""Efficient model parameter randomization test, eMPRT (Hedström et al., "Sanity Checks Revisited: An
Exploration to Repair the Model Parameter Randomisation Test", XAI in Action workshop, NeurIPS 2023;
Quantus ``EfficientMPRT``).

Instead of correlating maps layer by layer (MPRT, Adebayo et al. 2018), eMPRT measures the relative rise
in explanation complexity once the model is fully randomized:
``eMPRT(x) = (H(e_rand(x)) - H(e(x))) / H(e(x))``, with ``H`` the Shannon entropy (nats) of the
``bins``-bin histogram of the map's values (Quantus' ``discrete_entropy`` with its default 100 bins) and
``e_rand`` the map of the same class (the clean top-1) from a fully randomized deep copy of the model
(:mod:`evalcam.metrics.randomization`; the user's model is untouched). Maps are compared at input
resolution. Higher is better: an explanation of a random model should be noisier.

``abs=True`` takes the entropy of ``|e|`` instead, after upsampling (Quantus' ``abs=True``: ``np.abs`` of
the map at input resolution). Quantus' ``normalise`` (division by a positive number per map) is not
applied: the histogram spans each map's own [min, max], so a positive rescaling leaves every count and
the entropy unchanged (up to float rounding at bin edges).

The randomized copy is built once and reused for every batch of the same model (it is deterministic).
Degenerate maps: a constant or non-finite original map has no entropy to compare with: counted in
``degenerate_maps`` and not scored. A non-finite randomized map: likewise; a constant randomized map is
counted but scored (its entropy, 0, is a real answer: the random model's explanation carries nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.randomization import (
    SCHEMES,
    fully_randomized,
    histogram_entropy,
    model_explainer,
)
from evalcam.metrics.reexplain import reexplain, require_eval
from evalcam.metrics.stats import flat_maps


class RandomizedModelCache:
    """The fully randomized copy of the last model seen, rebuilt only when the model object changes."""

    def __init__(self) -> None:
        self._source: torch.nn.Module | None = None
        self._key: tuple | None = None
        self._model: torch.nn.Module | None = None

    def get(self, model: torch.nn.Module, seed: int, scheme: str, layers: Sequence[str] | None):
        key = (seed, scheme, tuple(layers or ()))
        # identity, not id(): a freed model's id can be reused by a different one
        if self._source is not model or self._key != key or self._model is None:
            self._model = fully_randomized(model, seed, scheme, layers)
            self._source, self._key = model, key
        return self._model


class EfficientMPRT(Metric):
    name = "emprt"
    pred_topk = 1
    higher_is_better: ClassVar[dict[str, bool]] = {"score": True}
    omitted_when_empty: ClassVar[tuple[str, ...]] = ("score",)

    def __init__(
        self,
        device: torch.device | str = "cpu",
        bins: int = 100,
        seed: int = 0,
        scheme: str = "cascade",
        layers: Sequence[str] | None = None,
        chunk_size: int = 32,
        abs: bool = False,
    ) -> None:
        super().__init__(device)
        if scheme not in SCHEMES:
            raise ValueError(f"emprt: unknown scheme {scheme!r}; use one of: {', '.join(SCHEMES)}")
        if int(bins) < 2:
            raise ValueError(f"emprt: bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self.seed = int(seed)
        self.scheme = scheme
        self.layers = list(layers) if layers else None
        self.chunk_size = int(chunk_size)
        self.abs = bool(abs)
        self._cache = RandomizedModelCache()
        for state in ("score_sum", "h_orig_sum", "h_rand_sum", "measured", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def randomized_maps(self, batch: EvalBatch, classes: torch.Tensor) -> torch.Tensor:
        model = self._cache.get(batch.explainer.model, self.seed, self.scheme, self.layers)
        explainer = model_explainer(batch, model)
        chunks = reexplain(
            explainer,
            len(batch.samples),
            lambda items: batch.inputs[items.to(batch.inputs.device)],
            lambda items: classes[items.to(classes.device)],
            self.chunk_size,
            None,
        )
        return torch.cat([maps for _, _, maps, _, _ in chunks])

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        require_eval(batch.explainer.model, self.name)
        device = batch.inputs.device
        classes = batch.pred_classes[:, 0].to(device)
        size = tuple(batch.inputs.shape[-2:])
        native_orig = batch.pred_maps[:, 0].detach()
        original = upsample(native_orig, size).double()
        native = self.randomized_maps(batch, classes).to(device)
        randomized = upsample(native, size).double()
        if self.abs:
            original, randomized = original.abs(), randomized.abs()
            native_orig, native = native_orig.abs(), native.abs()
        h_orig = histogram_entropy(original, self.bins)
        bad_orig = flat_maps(native_orig).to(device)
        rand_nonfinite = ~torch.isfinite(native).flatten(1).all(1)
        rand_flat = flat_maps(native)
        # a constant map has entropy 0; its upsampled copy would bin float ripples instead
        h_rand = torch.where(rand_flat, 0.0, histogram_entropy(randomized, self.bins))
        measured = ~bad_orig & ~rand_nonfinite
        score = (h_rand - h_orig) / torch.where(measured, h_orig, torch.ones_like(h_orig))
        records = []
        for i in range(len(batch.samples)):
            records.append(
                self.record(
                    score=float(score[i]),
                    entropy_original=float(h_orig[i]),
                    entropy_randomized=float(h_rand[i]),
                )
                if bool(measured[i])
                else {}
            )
        self.score_sum = self.score_sum + float(score[measured].sum())
        self.h_orig_sum = self.h_orig_sum + float(h_orig[measured].sum())
        self.h_rand_sum = self.h_rand_sum + float(h_rand[measured].sum())
        self.measured = self.measured + float(measured.sum())
        self.images = self.images + len(batch.samples)
        self.degenerate = self.degenerate + float((bad_orig | rand_nonfinite | rand_flat).sum())
        return records

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if float(self.measured) > 0:
            out["score"] = safe_ratio(self.score_sum, self.measured)
            out["entropy_original"] = safe_ratio(self.h_orig_sum, self.measured)
            out["entropy_randomized"] = safe_ratio(self.h_rand_sum, self.measured)
        out.update(
            images=float(self.images), measured=float(self.measured), degenerate_maps=float(self.degenerate)
        )
        return out
