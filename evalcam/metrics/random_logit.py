"""Random logit test (Sixt, Granz & Landgraf, "When Explanations Lie: Why Many Modified BP Attributions
Fail", ICML 2020, Sec. 5.2; Quantus ``RandomLogit``).

An explanation of the predicted class should differ from that of a class the model did not predict. For
each image a class ``c'`` is drawn uniformly from the classes other than its clean top-1 ``c`` (a CPU
generator seeded with ``(seed, image_id)``, so the draw does not depend on the batch), the map of ``c'`` is
computed on the same input, and the score is the structural similarity (SSIM) of the two maps, each
divided by its maximum absolute value (Quantus' default ``normalise``), as 2-D images at input resolution
with skimage's defaults (7x7 window, :func:`evalcam.metrics.randomization.ssim`). Lower is better.

Quantus deviates from the paper, pinned by the parity test: it reshapes both maps to ``[batch, -1]``
before calling ``structural_similarity``, i.e. it computes a 1-D SSIM along the flattened rows (windows
that wrap across image rows) instead of the 2-D image SSIM the paper uses; and its ``normalise_by_max``
divides by the maximum over the whole batch. Here: 2-D SSIM of per-map normalized maps (the paper's).

Degenerate maps: a constant or non-finite map of either class has no structure to compare (SSIM is
0 / 0): counted in ``degenerate_maps`` and not scored.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch, Metric, safe_ratio
from evalcam.metrics.randomization import ssim
from evalcam.metrics.reexplain import copy_seed, reexplain, require_eval
from evalcam.metrics.stats import flat_maps


def other_classes(image_ids: list[str], classes: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """One class per image drawn uniformly from the ``num_classes - 1`` classes other than ``classes[i]``."""
    if num_classes < 2:
        raise ValueError("random_logit needs a model with at least 2 classes")
    draws = []
    for image_id, c in zip(image_ids, classes.tolist(), strict=True):
        gen = torch.Generator().manual_seed(copy_seed(seed, image_id, 0))
        r = int(torch.randint(0, num_classes - 1, (1,), generator=gen))
        draws.append(r + int(r >= c))
    return torch.tensor(draws, dtype=torch.long, device=classes.device)


def max_normalized(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.flatten(1).abs().amax(1).view(-1, 1, 1)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


class RandomLogit(Metric):
    name = "random_logit"
    pred_topk = 1
    higher_is_better: ClassVar[dict[str, bool]] = {"ssim": False}
    omitted_when_empty: ClassVar[tuple[str, ...]] = ("ssim",)

    def __init__(
        self, device: torch.device | str = "cpu", seed: int = 0, window: int = 7, chunk_size: int = 32
    ) -> None:
        super().__init__(device)
        self.seed = int(seed)
        self.window = int(window)
        self.chunk_size = int(chunk_size)
        for state in ("ssim_sum", "measured", "images", "degenerate"):
            self.add_state(state, torch.zeros((), dtype=torch.float64))

    def update(self, batch: EvalBatch) -> list[dict[str, Any]]:
        require_eval(batch.explainer.model, self.name)
        size = tuple(batch.inputs.shape[-2:])
        if min(size) < self.window:
            raise ValueError(f"random_logit: a {self.window}-px SSIM window does not fit {size} inputs")
        device = batch.inputs.device
        classes = batch.pred_classes[:, 0].to(device)
        ids = [s.image_id for s in batch.samples]
        off = other_classes(ids, classes, int(batch.logits.shape[1]), self.seed)
        chunks = reexplain(
            batch.explainer,
            len(ids),
            lambda items: batch.inputs[items.to(device)],
            lambda items: off[items.to(device)],
            self.chunk_size,
            None,
        )
        native = torch.cat([maps for _, _, maps, _, _ in chunks]).to(device)
        off_maps = upsample(native, size).double()
        original = upsample(batch.pred_maps[:, 0].detach(), size).double()
        bad = flat_maps(batch.pred_maps[:, 0]).to(device) | flat_maps(native)
        value = torch.zeros(len(ids), dtype=torch.float64, device=device)
        if bool((~bad).any()):
            value[~bad] = ssim(max_normalized(original[~bad]), max_normalized(off_maps[~bad]), self.window)
        records = [
            self.record({"class": int(off[i])} | ({} if bool(bad[i]) else {"ssim": float(value[i])}))
            for i in range(len(ids))
        ]
        self.ssim_sum = self.ssim_sum + float(value[~bad].sum())
        self.measured = self.measured + float((~bad).sum())
        self.images = self.images + len(ids)
        self.degenerate = self.degenerate + float(bad.sum())
        return records

    def compute(self) -> dict[str, float]:
        out = {"ssim": safe_ratio(self.ssim_sum, self.measured)} if float(self.measured) > 0 else {}
        out.update(
            images=float(self.images), measured=float(self.measured), degenerate_maps=float(self.degenerate)
        )
        return out
