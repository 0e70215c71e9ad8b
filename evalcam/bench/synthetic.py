"""End-to-end throughput on synthetic images through the run's batch step (:mod:`evalcam.pipeline`),
and the faithfulness metric's occlusion throughput against Captum's ``Occlusion``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from evalcam.bench.timing import short_error
from evalcam.devices import synchronize
from evalcam.models.bundle import ModelBundle

ILSVRC_VAL_IMAGES = 50_000


def synthetic_images(count: int, size: int, seed: int) -> list[torch.Tensor]:
    """uint8 ``[3, size, size]`` images: low-frequency colour fields plus noise, so that they look more like
    photos than white noise does (smooth regions, a few edges)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    noise = torch.rand(count, 3, size, size, generator=gen) * 0.15
    pixels = ((smooth + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return list(pixels.unbind(0))


def run_synthetic(
    bundle: ModelBundle,
    method: str,
    params: dict[str, Any],
    count: int,
    batch_size: int,
    size: int,
    device: torch.device,
) -> dict[str, Any]:
    """N synthetic images through the run's per-batch step (preprocess + top-5 maps + weak_loc)."""
    from evalcam.data.types import Sample
    from evalcam.methods import build_explainer
    from evalcam.metrics import build_metrics
    from evalcam.pipeline import RunContext, evaluate_batch

    explainer = build_explainer(method, bundle, **dict(params))
    context = RunContext.build(bundle, explainer, build_metrics({"weak_loc": {}}, device), device, topk=5)
    # A pool of distinct images reused cyclically: generating 50k images is not what is being timed.
    pool = synthetic_images(min(count, 4 * batch_size), size, seed=1)
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 1000, (len(pool),), generator=gen).tolist()
    box = torch.tensor([[size * 0.2, size * 0.2, size * 0.8 - 1, size * 0.8 - 1]])

    def samples_for(start: int, stop: int) -> list[Sample]:
        return [
            Sample(
                image=pool[i % len(pool)],
                image_id=f"syn{i:06d}",
                labels=[labels[i % len(pool)]],
                boxes={labels[i % len(pool)]: box},
                orig_size=(size, size),
            )
            for i in range(start, stop)
        ]

    # Warm-up batch (cuDNN autotuning, allocator), not counted.
    evaluate_batch(samples_for(0, min(batch_size, count)), context)
    synchronize(device)
    stages = {"preprocess": 0.0, "explain": 0.0, "metric": 0.0}
    total = 0.0
    for start in range(0, count, batch_size):
        samples = samples_for(start, min(start + batch_size, count))
        context.reset_metrics()
        synchronize(device)
        t0 = time.perf_counter()
        inputs = context.preprocess(samples)
        synchronize(device)
        t1 = time.perf_counter()
        batch = context.explain(samples, inputs)
        synchronize(device)
        t2 = time.perf_counter()
        for metric in context.metrics:
            metric.update(batch)
        synchronize(device)
        t3 = time.perf_counter()
        stages["preprocess"] += t1 - t0
        stages["explain"] += t2 - t1
        stages["metric"] += t3 - t2
    # The same work through the run's own batch function, so the figure includes its row building.
    synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, count, batch_size):
        evaluate_batch(samples_for(start, min(start + batch_size, count)), context)
    synchronize(device)
    total = time.perf_counter() - t0
    per_second = count / total
    return {
        "method": method,
        "images": count,
        "batch_size": batch_size,
        "image_size": size,
        "topk": context.topk,
        "seconds": total,
        "images_per_s": per_second,
        "stage_seconds": stages,
        "ilsvrc_val_minutes": ILSVRC_VAL_IMAGES / per_second / 60,
    }


def time_faithfulness(
    bundle: ModelBundle,
    x: torch.Tensor,
    images: list[torch.Tensor],
    classes: torch.Tensor,
    device: torch.device,
    repeats: int,
    budget_s: float,
    with_captum: bool,
) -> dict[str, Any]:
    """Throughput of the faithfulness metric (occlusion sensitivity vs the map, Grad-CAM paper Sec. 5) on
    Grad-CAM maps, plus Captum's ``Occlusion`` with the same window and stride as a reference."""
    from evalcam.data.types import Sample
    from evalcam.methods import build_explainer
    from evalcam.metrics import build_metrics
    from evalcam.pipeline import explain_batch

    metric = build_metrics({"faithfulness": {"incremental": True}}, device)[0]
    explainer = build_explainer("gradcam", bundle)
    size = images[0].shape[-2:]
    full = torch.tensor([[0.0, 0.0, size[1] - 1.0, size[0] - 1.0]])
    samples = [
        Sample(image=img, image_id=f"f{i}", labels=[int(c)], boxes={int(c): full}, orig_size=tuple(size))
        for i, (img, c) in enumerate(zip(images, classes.tolist(), strict=True))
    ]
    batch = explain_batch(
        samples, x, bundle, explainer, max(1, int(metric.pred_topk or 1)), metric.needs_gt_maps
    )
    patch, stride = getattr(metric, "patch_size", None), getattr(metric, "stride", None)
    windows = None
    if patch and stride:
        from evalcam.methods.occlusion import patch_origins

        rows = len(patch_origins(int(x.shape[-2]), patch, stride))
        windows = rows * len(patch_origins(int(x.shape[-1]), patch, stride))

    def measure(call: Callable[[], Any]) -> list[float]:
        # The model is warm from the method timings; occlusion is hundreds of forwards per image, so
        # one call is already a long average, and the budget caps the rest.
        times: list[float] = []
        while len(times) < repeats and (not times or sum(times) + times[0] <= budget_s):
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return times

    def update() -> None:
        metric.reset()
        metric.update(batch)

    times = measure(update)
    median = statistics.median(times)
    dense_metric = build_metrics({"faithfulness": {"incremental": False}}, device)[0]

    def update_dense() -> None:
        dense_metric.reset()
        dense_metric.update(batch)

    dense_times = measure(update_dense)
    out: dict[str, Any] = {
        "images": x.shape[0],
        "params": {k: v for k, v in vars(metric).items() if isinstance(v, int | float | str | bool)},
        "windows_per_image": windows,
        "runs": len(times),
        "median_s": median,
        "images_per_s": x.shape[0] / median,
    }
    out["dense"] = {"runs": len(dense_times), "median_s": statistics.median(dense_times)}
    if windows:
        out["occluded_inputs_per_s"] = x.shape[0] * windows / median
        out["dense"]["occluded_inputs_per_s"] = x.shape[0] * windows / out["dense"]["median_s"]
    if with_captum and patch and stride:
        try:
            from captum.attr import Occlusion

            occlusion = Occlusion(bundle.model)
            chunk = int(getattr(metric, "chunk_size", 64))

            def captum_call() -> None:
                with torch.no_grad():
                    occlusion.attribute(
                        x,
                        sliding_window_shapes=(3, patch, patch),
                        strides=(3, stride, stride),
                        baselines=0.0,
                        target=classes,
                        perturbations_per_eval=chunk,
                    )

            ctimes = measure(captum_call)
            cmedian = statistics.median(ctimes)
            # Captum has no extra border-aligned row/column of windows.
            cwin = ((int(x.shape[-2]) - patch) // stride + 1) * ((int(x.shape[-1]) - patch) // stride + 1)
            out["captum_occlusion"] = {
                "runs": len(ctimes),
                "median_s": cmedian,
                "images_per_s": x.shape[0] / cmedian,
                "windows_per_image": cwin,
                "occluded_inputs_per_s": x.shape[0] * cwin / cmedian,
            }
        except Exception as err:
            out["captum_occlusion"] = {"note": f"failed: {short_error(err)}"}
    return out
