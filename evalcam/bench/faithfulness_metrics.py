"""evalcam's faithfulness family against Quantus 0.6 on identical maps: time ratios and forward counts.

:func:`bench_rows` builds one batch (EfficientNet-Lite0 by default, ``images`` packaged photos and their
mirror images at 224 px, CPU), one set of smooth random maps (seeded), and runs each metric once per side
with matched settings (same steps, baseline value 0 in the normalized input space, softmax scores), after
one untimed warm-up forward. Each row holds the wall times, ``ratio = quantus_s / evalcam_s`` (above 1:
evalcam is faster), and the images pushed through the network by full forwards on each side (counted by a
forward pre-hook on the model; copies that evalcam's incremental re-inference scores by re-computing only
the cone of their changed region are not forwards: infidelity's squares, and the first, local steps of the
cumulative games, which the row's note counts). Quantus is optional: without it the rows carry
evalcam's numbers only. ``benchmarks/bench_faithfulness.py`` prints the table.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from evalcam.data.types import Sample
from evalcam.metrics import build_metrics, local_steps
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.faithful_base import input_cams


class CountingModel:
    """Counts the images ``model`` is run on by full forwards: a pre-hook on the root module, which
    Quantus's calls and evalcam's dense forwards go through, while the incremental re-inference runs the
    traced layers (and ``torch.fx`` can still trace the model)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.images = model, 0
        model.register_forward_pre_hook(self._count)

    def _count(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.images += int(args[0].shape[0])


def bench_batch(images: int = 8, model_name: str = "efficientnet_lite0", seed: int = 0) -> EvalBatch:
    """A batch of packaged photos (and mirrors) through ``model_name``, with seeded smooth random maps."""
    from evalcam.data.base import uint8_rgb
    from evalcam.data.sample import load_source
    from evalcam.models import load_model

    bundle = load_model(model_name, device="cpu")
    bundle.model.eval()
    sources = ["skimage:chelsea", "skimage:coffee", "matplotlib:grace_hopper.jpg", "sklearn:china.jpg"]
    photos = [uint8_rgb(load_source(s)) for s in sources]
    pictures = [(p if (i // len(photos)) % 2 == 0 else p.flip(-1)) for i, p in enumerate(photos * images)]
    pictures = pictures[:images]
    inputs = bundle.preprocess(pictures, "cpu")
    with torch.no_grad():
        logits = bundle.model(inputs)
    maps = torch.rand(images, 7, 7, generator=torch.Generator().manual_seed(seed))
    samples = [Sample(image=p, image_id=f"bench{i}", labels=[]) for i, p in enumerate(pictures)]
    return EvalBatch(
        samples=samples,
        inputs=inputs,
        logits=logits,
        pred_classes=logits.argmax(1, keepdim=True),
        pred_maps=maps[:, None],
        explainer=None,
        bundle=bundle,
    )


def _settings(steps: int) -> dict[str, tuple[dict[str, Any], Callable[[Any], Any] | None, dict[str, Any]]]:
    """Per metric: evalcam params, the Quantus class getter and its params (same protocol)."""
    pixels = 224 * 224
    # infidelity: about ``steps`` squares of a side dividing 224 (Quantus 0.6 fails when it must pad)
    side = min((d for d in range(1, 225) if 224 % d == 0), key=lambda d: abs((224 // d) ** 2 - steps))
    return {
        "pixel_flipping": (
            {"steps": steps, "baseline": "mean"},
            lambda q: q.PixelFlipping,
            {"features_in_step": 3 * pixels // steps, "perturb_baseline": 0.0},
        ),
        "region_perturbation": (
            {"patch_size": 16, "regions": steps, "baseline": "mean"},
            lambda q: q.RegionPerturbation,
            {"patch_size": 16, "regions_evaluation": steps, "perturb_baseline": 0.0},
        ),
        "faithfulness_estimate": (
            {"steps": steps, "baseline": "mean"},
            lambda q: q.FaithfulnessEstimate,
            {"features_in_step": 3 * pixels // steps, "perturb_baseline": 0.0},
        ),
        "faithfulness_correlation": (
            {"runs": steps, "subset_size": 224, "baseline": "mean"},
            lambda q: q.FaithfulnessCorrelation,
            {"nr_runs": steps, "subset_size": 3 * 224, "perturb_baseline": 0.0, "return_aggregate": False},
        ),
        "monotonicity_correlation": (
            {"steps": steps, "samples": 1, "baseline": "mean"},
            lambda q: q.MonotonicityCorrelation,
            {"features_in_step": 3 * pixels // steps, "nr_samples": 1, "perturb_baseline": 0.0},
        ),
        "irof": (
            {"n_segments": steps, "baseline": "mean"},
            None,  # Quantus 0.6's IROF refuses colour images with its default mask replacement
            {},
        ),
        "infidelity": (
            {"patch_size": side, "stride": side, "score": "prob"},
            lambda q: q.Infidelity,
            {
                "perturb_patch_sizes": [224 // int(steps**0.5)],
                "n_perturb_samples": 1,
                "perturb_baseline": 0.0,
            },
        ),
        "road": ({"percentages": [10, 50, 90]}, None, {}),
        "sufficiency": ({}, lambda q: q.Sufficiency, {}),
    }


def bench_rows(images: int = 8, steps: int = 48, metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """Per metric: ``evalcam_s``, ``quantus_s``, ``ratio`` and the images each side ran through the model.

    ``steps`` (perturbation steps, runs or segments per image) must be ``3 m`` with ``m`` dividing 224*224:
    Quantus counts features per channel and wants a step that divides H*W (12, 24, 48, 96, ...).
    """
    if steps % 3 or (224 * 224) % (steps // 3):
        raise ValueError(f"steps={steps} must be 3*m with m dividing 224*224 (12, 24, 48, 96, ...)")
    batch = bench_batch(images)
    counter = CountingModel(batch.bundle.model)
    cams, _ = input_cams(batch)
    x = batch.inputs.numpy()
    y = batch.pred_classes[:, 0].numpy()
    a = cams.float().numpy()[:, None]
    try:
        import quantus
    except ImportError:
        quantus = None
    if quantus is not None and not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in NumPy 2.4
    rows = []
    for name, (ours, peer, theirs) in _settings(steps).items():
        if metrics and name not in metrics:
            continue
        # chunks as large as Quantus's batches: both sides run forwards of the same shape
        params = {**ours, "chunk_size": images} if name != "sufficiency" else ours
        (metric,) = build_metrics({name: params}, "cpu")
        counter.images = 0
        local_steps.LAST.__dict__.update(local_steps.StepCounts().__dict__)
        start = time.perf_counter()
        metric.update(batch)
        row: dict[str, Any] = {
            "metric": name,
            "evalcam_s": time.perf_counter() - start,
            "evalcam_forwards": counter.images,
            "quantus_s": None,
            "quantus_forwards": None,
            "ratio": None,
        }
        if name == "infidelity":
            row["note"] = "evalcam: incremental re-inference of each square's cone (forwards not counted)"
        elif local_steps.LAST.clean_passes:
            last = local_steps.LAST
            row["evalcam_forwards"] += last.clean_passes  # the incremental path's clean passes are forwards
            row["note"] = (
                f"evalcam: {last.local} copies incremental (~0.5-0.8 forward each, not counted) "
                f"after {last.clean_passes} clean passes (counted)"
            )
        if quantus is not None and peer is not None:
            metric_q = peer(quantus)(normalise=False, abs=False, disable_warnings=True, **theirs)
            counter.images = 0
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    kwargs = {"device": "cpu", "softmax": True, "batch_size": images}
                    metric_q(model=counter.model, x_batch=x, y_batch=y, a_batch=a, **kwargs)
            except Exception as err:  # a peer failure is a row note, not a lost table
                row["note"] = f"Quantus failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
                rows.append(row)
                continue
            row["quantus_s"] = time.perf_counter() - start
            row["quantus_forwards"] = counter.images
            row["ratio"] = row["quantus_s"] / max(row["evalcam_s"], 1e-9)
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`bench_rows`."""
    lines = [
        "| metric | evalcam s | forwards | Quantus s | forwards | Quantus / evalcam | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:

        def cell(value: Any, fmt: str) -> str:
            return "n/a" if value is None else format(value, fmt)

        quantus_cells = f"{cell(r['quantus_s'], '.2f')} | {cell(r['quantus_forwards'], 'd')}"
        lines.append(
            f"| {r['metric']} | {r['evalcam_s']:.2f} | {r['evalcam_forwards']} | {quantus_cells} "
            f"| {cell(r['ratio'], '.2f')}{'' if r['ratio'] is None else 'x'} | {r.get('note', '')} |"
        )
    return "\n".join(lines)
