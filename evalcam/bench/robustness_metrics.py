"""Time the robustness and randomization metrics of issue 18 against Quantus 0.6 (an optional peer).

Protocol: EfficientNet-Lite0 (packaged ImageNet weights), Grad-CAM at the bundle's CAM layer, ``batch_size``
packaged photos, CPU by default. Both sides get the same clean maps (Quantus as ``a_batch``, excluded from
both timings), the same explanation function (evalcam's Grad-CAM, upsampled to the input size) and the same
number of perturbed copies per image, so they explain the same number of images; evalcam explains the
copies of all images in one chunked call, Quantus one batch per copy. Every model forward is counted (images
through the network, including the explainer's own), so a ratio always comes with the work both sides did.
sMPRT is left out: Quantus' ``SmoothMPRT`` calls its own ``quantus.explain`` instead of the given function,
so the two would not explain with the same method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from evalcam.maps import upsample
from evalcam.methods.gradcam import GradCAM
from evalcam.metrics import build_metrics
from evalcam.metrics.base import EvalBatch
from evalcam.pipeline import explain_batch

PHOTOS = (
    "skimage:chelsea",
    "skimage:coffee",
    "skimage:astronaut",
    "skimage:rocket",
    "matplotlib:grace_hopper.jpg",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
    "skimage:motorcycle_left",
)


@contextmanager
def count_forwards(model: torch.nn.Module):
    """Count the images that go through ``model``'s forward (``counter["images"]``)."""
    counter = {"images": 0}

    def hook(_module, args):
        counter["images"] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def lite0_batch(batch_size: int, device: str) -> EvalBatch:
    from evalcam.data.base import uint8_rgb
    from evalcam.data.sample import load_source
    from evalcam.data.types import Sample
    from evalcam.models import load_model

    bundle = load_model("efficientnet_lite0", device=device)
    images = [uint8_rgb(load_source(PHOTOS[i % len(PHOTOS)])) for i in range(batch_size)]
    inputs = bundle.preprocess(images, device)
    samples = [Sample(image=img, image_id=f"photo{i}", labels=[]) for i, img in enumerate(images)]
    explainer = GradCAM(bundle.model, bundle.target_layer)
    return explain_batch(samples, inputs, bundle, explainer, topk=1, need_gt=False)


def _quantus_cases(quantus, samples: int, layer: str) -> dict[str, tuple[Callable[[], Any], dict[str, Any]]]:
    off = {"abs": False, "normalise": False, "disable_warnings": True, "display_progressbar": False}
    return {
        "max_sensitivity": (lambda: quantus.MaxSensitivity(nr_samples=samples, **off), {"samples": samples}),
        "local_lipschitz": (
            lambda: quantus.LocalLipschitzEstimate(nr_samples=samples, **off),
            {"samples": samples},
        ),
        "relative_input_stability": (
            lambda: quantus.RelativeInputStability(nr_samples=samples, **off),
            {"samples": samples},
        ),
        "relative_output_stability": (
            lambda: quantus.RelativeOutputStability(nr_samples=samples, **off),
            {"samples": samples},
        ),
        "relative_representation_stability": (
            lambda: quantus.RelativeRepresentationStability(nr_samples=samples, layer_names=[layer], **off),
            {"samples": samples, "layer": layer},
        ),
        "continuity": (
            lambda: quantus.Continuity(nr_steps=samples, disable_warnings=True),
            {"steps": samples, "fill": "min"},
        ),
        "emprt": (lambda: quantus.EfficientMPRT(disable_warnings=True), {"scheme": "quantus"}),
        "random_logit": (lambda: quantus.RandomLogit(num_classes=1000, disable_warnings=True), {}),
    }


def bench_rows(
    batch_size: int = 8, samples: int = 4, device: str = "cpu", chunk_size: int | None = None
) -> list[dict[str, Any]]:
    """One row per metric: seconds and forwarded images of evalcam and Quantus, and the speed-up
    ``quantus_s / evalcam_s``. ``chunk_size`` (images per evalcam explainer call) defaults to
    ``batch_size``: on CPU one Lite0 Grad-CAM call of 32 images took 2x longer than four of 8 (measured),
    on a GPU larger chunks pay. Raises ImportError when Quantus is not installed."""
    import quantus

    if not hasattr(np, "trapz"):  # quantus 0.6 calls np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid
    batch = lite0_batch(batch_size, device)
    model = batch.explainer.model
    layer = batch.bundle.target_layer
    size = tuple(batch.inputs.shape[-2:])

    def explain(model, inputs, targets, **_kwargs) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
        y = torch.as_tensor(np.asarray(targets), device=device).long()
        maps = GradCAM(model, layer).explain(x, y).maps[:, 0]
        return upsample(maps, size)[:, None].cpu().numpy()

    x = batch.inputs.cpu().numpy()
    y = batch.pred_classes[:, 0].cpu().numpy()
    a = upsample(batch.pred_maps[:, 0], size)[:, None].cpu().numpy()
    # one untimed explainer call first, so neither side pays the allocator's warm-up
    batch.explainer.explain(batch.inputs, batch.pred_classes[:, 0])
    rows = []
    for name, (make, params) in _quantus_cases(quantus, samples, layer).items():
        (ours,) = build_metrics({name: {**params, "chunk_size": chunk_size or batch_size}}, device)
        with count_forwards(model) as ours_count:
            start = time.perf_counter()
            ours.update(batch)
            ours_s = time.perf_counter() - start
        theirs = make()
        # eMPRT forwards its randomized copies, which the hook on the original model cannot see
        with count_forwards(model) as theirs_count:
            start = time.perf_counter()
            theirs(model=model, x_batch=x, y_batch=y, a_batch=a, explain_func=explain, device=device)
            theirs_s = time.perf_counter() - start
        rows.append(
            {
                "metric": name,
                "quantus": type(theirs).__name__,
                "evalcam_s": ours_s,
                "quantus_s": theirs_s,
                "speedup": theirs_s / ours_s,
                "evalcam_forward_images": ours_count["images"],
                "quantus_forward_images": theirs_count["images"],
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| metric | Quantus | evalcam s | Quantus s | speed-up | forwards evalcam / Quantus (orig. model) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['metric']} | {r['quantus']} | {r['evalcam_s']:.2f} | {r['quantus_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['evalcam_forward_images']} / {r['quantus_forward_images']} |"
        )
    return "\n".join(lines)
