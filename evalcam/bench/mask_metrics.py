"""Speed of the no-forward metrics of issue 18 (complexity, mask localisation, Focus's scoring) against
Quantus 0.6 on identical maps and masks.

Protocol: ``batch`` seeded CAM-like maps (7 x 7 noise, one bump, ReLU) and elliptic masks of ``size`` x
``size`` images. evalcam runs the metric's accumulator ``update`` on an :class:`EvalBatch` holding the 7 x 7
maps (so it also pays the bilinear upsampling); Quantus is given the upsampled maps as ``a_batch`` and the
masks as ``s_batch`` (its batched ``evaluate_batch`` path, warnings off). Focus compares the scoring of
given mosaic maps only (the method's pass over the mosaics is the same work on both sides). Neither side
runs a forward pass. Each side's time is the best of ``repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evalcam.data.types import Sample
from evalcam.metrics import METRICS
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.mask_scores import quadrant_share

#: evalcam registry name -> (Quantus class name, its keyword arguments matching evalcam's defaults)
PAIRS: dict[str, tuple[str, dict[str, Any]]] = {
    "sparseness": ("Sparseness", {}),
    "complexity": ("Complexity", {}),
    "effective_complexity": ("EffectiveComplexity", {}),
    "relevance_mass": ("RelevanceMassAccuracy", {}),
    "relevance_rank": ("RelevanceRankAccuracy", {}),
    "attribution_localisation": ("AttributionLocalisation", {"abs": False, "positive_attributions": True}),
    "topk_intersection": ("TopKIntersection", {"k": 1000}),
    "mask_auc": ("AUC", {}),
    "focus": ("Focus", {}),
}


def _inputs(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 7, 7, generator=gen) - 0.3
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(batch, 2, generator=gen) * 1.0 - 0.5
    radii = torch.rand(batch, 2, generator=gen) * 0.4 + 0.2
    masks = ((xx - centres[:, :1, None]) / radii[:, :1, None]) ** 2
    masks = masks + ((yy - centres[:, 1:, None]) / radii[:, 1:, None]) ** 2 <= 1
    return coarse.clamp_min(0), masks


def _best(fn: Callable[[], Any], repeats: int, device: torch.device | None = None) -> float:
    def call() -> None:
        fn()
        if device is not None and device.type == "cuda":  # kernels run asynchronously: time them to the end
            torch.cuda.synchronize(device)

    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_rows(
    batch: int = 8, size: int = 224, repeats: int = 3, seed: int = 0, device: str = "cpu"
) -> list[dict[str, Any]]:
    """One row per metric: seconds per batch on each side and ``ratio`` = Quantus / evalcam. ``device``
    is evalcam's (maps and states); Quantus always runs on NumPy."""
    import quantus

    dev = torch.device(device)
    if not hasattr(np, "trapz"):  # quantus 0.6 calls np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    coarse, masks = _inputs(batch, size, seed)
    samples = [
        Sample(image=torch.zeros(3, size, size, dtype=torch.uint8), image_id=str(i), labels=[0], masks={0: m})
        for i, m in enumerate(masks)
    ]
    eval_batch = EvalBatch(
        samples=samples,
        inputs=torch.zeros(batch, 3, size, size),
        logits=torch.zeros(batch, 1000),
        pred_classes=torch.zeros(batch, 1, dtype=torch.long),
        pred_maps=coarse[:, None].to(dev),
        explainer=None,  # type: ignore[arg-type]
        bundle=None,  # type: ignore[arg-type]
        gt_classes=torch.zeros(batch, 1, dtype=torch.long),
        gt_maps=coarse[:, None].to(dev),
    )
    full = F.interpolate(coarse[:, None], size=(size, size), mode="bilinear", align_corners=False)
    a_batch = full.numpy().astype(np.float64)
    s_batch = masks[:, None].numpy().astype(np.float64)
    x_batch = np.zeros((batch, 3, size, size), dtype=np.float32)
    y_batch = np.zeros(batch, dtype=int)
    flags = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1]]).repeat(batch, 1)[:batch]

    class _Model(torch.nn.Module):  # Focus's preprocessing insists on a model; it is never run here
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 1000)

    mosaic_maps, mosaic_flags = full[:, 0].to(dev), flags.to(dev)
    rows = []
    for name, (peer, kwargs) in PAIRS.items():
        metric = getattr(quantus, peer)(disable_warnings=True, **kwargs)
        if name == "focus":
            ours = _best(lambda: quadrant_share(mosaic_maps, mosaic_flags), repeats, dev)
            theirs = _best(
                lambda m=metric: m(
                    model=_Model(),
                    x_batch=x_batch,
                    y_batch=y_batch,
                    a_batch=a_batch.repeat(3, 1),
                    custom_batch=[tuple(f) for f in flags.tolist()],
                    batch_size=batch,
                ),
                repeats,
            )
        else:
            accumulator = METRICS[name](device=dev)
            ours = _best(lambda acc=accumulator: acc.update(eval_batch), repeats, dev)
            theirs = _best(
                lambda m=metric: m(
                    model=None,
                    x_batch=x_batch,
                    y_batch=y_batch,
                    a_batch=a_batch.copy(),
                    s_batch=s_batch,
                    batch_size=batch,
                ),
                repeats,
            )
        rows.append(
            {
                "metric": name,
                "peer": f"quantus.{peer}",
                "evalcam_s": ours,
                "peer_s": theirs,
                "ratio": theirs / ours,
                "forwards": 0,
                "batch": batch,
                "size": size,
                "device": str(dev),
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Lines for ``python -m evalcam bench``: ``<metric> vs <peer>: <ratio>x (...)``."""
    return [
        f"{r['metric']:<26} vs {r['peer']:<32} {r['ratio']:7.1f}x  (evalcam {r['evalcam_s'] * 1e3:8.2f} ms, "
        f"Quantus {r['peer_s'] * 1e3:8.2f} ms per batch of {r['batch']} at {r['size']} px, evalcam on "
        f"{r['device']}, 0 forwards each)"
        for r in rows
    ]
