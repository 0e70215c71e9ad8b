"""evalcam's faithfulness family against its own forward floor and Quantus 0.6 on identical maps.

:func:`bench_rows` builds one batch (EfficientNet-Lite0 by default, ``images`` packaged photos and their
mirror images at 224 px, CPU), one set of smooth random maps (seeded), and runs each metric with matched
settings on both sides (same steps, baseline value 0 in the normalized input space, softmax scores, forward
batches of ``images`` inputs). Per metric and repeat, interleaved: evalcam's ``update``, then its **forward
floor** (bare ``torch.no_grad`` forwards of the same model with the batch sizes evalcam's full forwards had,
recorded by a forward pre-hook, plain NCHW inputs as a user's loop would pass them), then Quantus. Rows hold
medians of process CPU seconds (steadier than wall time on a shared host; wall ratios too),
``time_floor = evalcam / floor`` and ``ratio = Quantus / evalcam`` (above 1: evalcam is faster).

Copies scored by incremental re-inference (only the cone of their changed region) are not forwards; their
clean passes are. For such rows ``dense_floor_s`` is the floor of scoring every copy by a full forward
(chunks of ``images``). Quantus is optional: without it the rows carry evalcam's numbers only.
``benchmarks/bench_faithfulness.py`` prints the table.
"""

from __future__ import annotations

import dataclasses
import tempfile
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
from evalcam.models.chunked import compile_forwards


class CountingModel:
    """Records the batch size of every full forward of ``model``: a pre-hook on the root module, which
    Quantus's calls and evalcam's dense forwards go through, while the incremental re-inference runs the
    traced layers (and ``torch.fx`` can still trace the model)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.sizes = model, []
        model.register_forward_pre_hook(self._count)

    def _count(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.sizes.append(int(args[0].shape[0]))

    @property
    def images(self) -> int:
        return sum(self.sizes)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``fn()``; CPU time is the process's, steadier on a shared host."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def chunk_sizes(copies: int, chunk_size: int) -> list[int]:
    """Batch sizes of ``copies`` inputs run ``chunk_size`` at a time."""
    return [min(chunk_size, copies - lo) for lo in range(0, copies, max(1, chunk_size))]


@torch.no_grad()
def forward_floor(model: nn.Module, inputs: torch.Tensor, sizes: list[int]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of bare forwards of ``model`` with batch sizes ``sizes`` (copies of
    ``inputs``, built before the clock starts): what a metric that only ran those forwards would take."""
    if not sizes:
        return 0.0, 0.0
    index = torch.arange(max(sizes)) % inputs.shape[0]
    stock = inputs[index].contiguous()
    return timed(lambda: [model(stock[:size]) for size in sizes])


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


def _evalcam_once(
    name: str, params: dict[str, Any], batch: EvalBatch, counter: CountingModel
) -> dict[str, Any]:
    """One timed ``update`` of metric ``name``: seconds, the full forwards' batch sizes, and (incremental
    re-inference) the batch sizes the same copies would take as full forwards."""
    from evalcam.metrics import infidelity

    (metric,) = build_metrics({name: params}, "cpu")
    counter.sizes = []
    local_steps.LAST.__dict__.update(local_steps.StepCounts().__dict__)
    occluded: list[int] = []  # images whose squares infidelity scored (none when its score cache had them)
    real = infidelity.occluded_outputs

    def counted(model: nn.Module, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        occluded.append(int(inputs.shape[0]))
        return real(model, inputs, *args, **kwargs)

    infidelity.occluded_outputs = counted
    try:
        wall, cpu = timed(lambda: metric.update(batch))
    finally:
        infidelity.occluded_outputs = real
    out: dict[str, Any] = {"wall": wall, "cpu": cpu, "sizes": list(counter.sizes), "note": ""}
    chunk = int(params.get("chunk_size", len(batch.samples)))
    last = local_steps.LAST
    if name == "infidelity":
        side = int(params["patch_size"])
        copies = sum(occluded) * (int(batch.inputs.shape[-1]) // side) ** 2
        # the incremental clean passes (groups of chunk // 4 images) are forwards
        out["sizes"] += [s for n in occluded for s in chunk_sizes(n, max(1, chunk // 4))]
        out["dense_sizes"] = chunk_sizes(copies, chunk)
        out["note"] = f"evalcam: all {copies} squares by incremental re-inference"
    elif last.clean_passes or last.local or last.unchanged:
        out["sizes"] += last.clean_batches  # the incremental path's clean passes are forwards
        copies = last.dense + last.local + last.unchanged
        out["dense_sizes"] = chunk_sizes(copies, chunk)
        out["note"] = (
            f"evalcam: {last.local} of {copies} copies incremental, {last.unchanged} repeats of a scored "
            f"input, {last.clean_passes} clean passes"
        )
    return out


def _quantus_once(
    peer: Callable[[Any], Any], theirs: dict[str, Any], arrays: tuple[Any, ...], counter: CountingModel
) -> dict[str, Any]:
    import quantus

    x, y, a = arrays
    metric_q = peer(quantus)(normalise=False, abs=False, disable_warnings=True, **theirs)
    counter.sizes = []
    kwargs = {"device": "cpu", "softmax": True, "batch_size": len(x)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wall, cpu = timed(
                lambda: metric_q(model=counter.model, x_batch=x, y_batch=y, a_batch=a, **kwargs)
            )
    except Exception as err:  # a peer failure is a row note, not a lost table
        return {"error": f"Quantus failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"}
    return {"wall": wall, "cpu": cpu, "sizes": list(counter.sizes)}


def _quantus() -> Any:
    """The quantus module (None when it is not installed), runnable on this NumPy."""
    try:
        import quantus
    except ImportError:
        return None
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in NumPy 2.4
    return quantus


def _peer_arrays(batch: EvalBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, a)`` as Quantus takes them: inputs, top-1 classes and the maps upsampled to the input."""
    cams, _ = input_cams(batch)
    return batch.inputs.numpy(), batch.pred_classes[:, 0].numpy(), cams.float().numpy()[:, None]


def _median(values: list[float]) -> float:
    return float(np.median(values))


def bench_rows(
    images: int = 8,
    steps: int = 48,
    metrics: list[str] | None = None,
    repeats: int = 1,
    compiled: bool = False,
) -> list[dict[str, Any]]:
    """Per metric: evalcam's, its forward floor's and Quantus's seconds (median of ``repeats``, CPU and
    wall), the forwards each side ran, ``time_floor = evalcam / floor`` and ``ratio = Quantus / evalcam``
    (both on CPU seconds). Repeats interleave evalcam, floor and Quantus per metric.

    ``steps`` (perturbation steps, runs or segments per image) must be ``3 m`` with ``m`` dividing 224*224:
    Quantus counts features per channel and wants a step that divides H*W (12, 24, 48, 96, ...).
    ``compiled``: evalcam's chunked forwards run through ``torch.compile``
    (:func:`evalcam.models.chunked.compile_forwards`); each metric runs once untimed first, so the one-off
    compile is not in its time.
    """
    if steps % 3 or (224 * 224) % (steps // 3):
        raise ValueError(f"steps={steps} must be 3*m with m dividing 224*224 (12, 24, 48, 96, ...)")
    batch = bench_batch(images)
    model = batch.bundle.model
    counter = CountingModel(model)
    arrays = _peer_arrays(batch)
    quantus = _quantus()
    chosen = {k: v for k, v in _settings(steps).items() if not metrics or k in metrics}
    runs: dict[str, dict[str, list[Any]]] = {name: {} for name in chosen}
    compile_forwards(compiled)
    # chunks as large as Quantus's batches: both sides run forwards of the same shape
    params_of = {name: {**ours, "chunk_size": images} if name != "sufficiency" else ours
                 for name, (ours, _peer, _theirs) in chosen.items()}  # fmt: skip
    if compiled:
        for name in chosen:
            _evalcam_once(name, params_of[name], batch, counter)
    for _ in range(max(1, int(repeats))):
        for name, (_ours, peer, theirs) in chosen.items():
            got = runs[name]
            ev = _evalcam_once(name, params_of[name], batch, counter)
            got.setdefault("evalcam", []).append(ev)
            got.setdefault("floor", []).append(forward_floor(model, batch.inputs, ev["sizes"]))
            if "dense_sizes" in ev:
                got.setdefault("dense", []).append(forward_floor(model, batch.inputs, ev["dense_sizes"]))
            if quantus is not None and peer is not None:
                got.setdefault("quantus", []).append(_quantus_once(peer, theirs, arrays, counter))
    compile_forwards(False)
    return [_row(name, got) for name, got in runs.items()]


#: metrics whose perturbed copies do not depend on the map: the methods of a sweep share their forwards
SHARED = ("faithfulness_correlation", "infidelity")


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several timed calls as one: seconds summed, forwards concatenated (a failed call: its error)."""
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        return {"error": failed[0]}
    out: dict[str, Any] = {
        "wall": sum(r["wall"] for r in runs),
        "cpu": sum(r["cpu"] for r in runs),
        "sizes": [s for r in runs for s in r["sizes"]],
        "note": runs[0].get("note", ""),
    }
    if any("dense_sizes" in r for r in runs):
        out["dense_sizes"] = [s for r in runs for s in r.get("dense_sizes", [])]
    return out


def bench_shared_rows(
    images: int = 8, steps: int = 48, methods: int = 3, metrics: list[str] | None = None, repeats: int = 1
) -> list[dict[str, Any]]:
    """:data:`SHARED` metrics scoring the maps of ``methods`` methods (seeded random map sets) on one
    batch, as a sweep does: evalcam with its score cache (``cache_dir``, a new folder each repeat, so the
    first method computes and the others read), Quantus once per method. Rows as :func:`bench_rows`', for
    all the methods together."""
    batch = bench_batch(images)
    model = batch.bundle.model
    counter = CountingModel(model)
    generator = torch.Generator().manual_seed(1)
    batches = [
        dataclasses.replace(batch, pred_maps=torch.rand(images, 1, 7, 7, generator=generator))
        for _ in range(max(1, int(methods)))
    ]
    quantus = _quantus()
    chosen = {k: v for k, v in _settings(steps).items() if k in SHARED and (not metrics or k in metrics)}
    runs: dict[str, dict[str, list[Any]]] = {name: {} for name in chosen}
    for _ in range(max(1, int(repeats))):
        for name, (ours, peer, theirs) in chosen.items():
            got = runs[name]
            with tempfile.TemporaryDirectory() as root:
                params = {**ours, "chunk_size": images, "cache_dir": root}
                ev = _merged([_evalcam_once(name, params, b, counter) for b in batches])
            ev["note"] = f"{len(batches)} methods: the first computes, the others read the score cache"
            got.setdefault("evalcam", []).append(ev)
            got.setdefault("floor", []).append(forward_floor(model, batch.inputs, ev["sizes"]))
            if quantus is not None and peer is not None:
                peer_runs = [_quantus_once(peer, theirs, _peer_arrays(b), counter) for b in batches]
                got.setdefault("quantus", []).append(_merged(peer_runs))
    return [_row(f"{name} x{len(batches)} methods", got) for name, got in runs.items()]


def _row(name: str, got: dict[str, list[Any]]) -> dict[str, Any]:
    ev = got["evalcam"]
    row: dict[str, Any] = {
        "metric": name,
        "evalcam_s": _median([r["cpu"] for r in ev]),
        "evalcam_wall_s": _median([r["wall"] for r in ev]),
        "evalcam_forwards": sum(ev[-1]["sizes"]),
        "floor_s": _median([f[1] for f in got["floor"]]),
        "dense_floor_s": _median([f[1] for f in got["dense"]]) if "dense" in got else None,
        "quantus_s": None,
        "quantus_wall_s": None,
        "quantus_forwards": None,
        "ratio": None,
        "wall_ratio": None,
        "note": ev[-1]["note"],
        "repeats": len(ev),
    }
    row["time_floor"] = row["evalcam_s"] / row["floor_s"] if row["floor_s"] > 0 else None
    if row["dense_floor_s"]:
        row["time_dense_floor"] = row["evalcam_s"] / row["dense_floor_s"]
    peer = got.get("quantus") or []
    if peer and "error" in peer[-1]:
        row["note"] = "; ".join(n for n in (row["note"], peer[-1]["error"]) if n)
    elif peer:
        row["quantus_s"] = _median([r["cpu"] for r in peer])
        row["quantus_wall_s"] = _median([r["wall"] for r in peer])
        row["quantus_forwards"] = sum(peer[-1]["sizes"])
        row["ratio"] = row["quantus_s"] / max(row["evalcam_s"], 1e-9)
        row["wall_ratio"] = row["quantus_wall_s"] / max(row["evalcam_wall_s"], 1e-9)
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`bench_rows` (CPU seconds; ``time/floor``: evalcam over its forwards)."""
    lines = [
        "| metric | forwards (evalcam / Quantus) | evalcam s | floor s | time/floor "
        "| Quantus s | Quantus / evalcam (CPU; wall) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def cell(value: Any, fmt: str, suffix: str = "") -> str:
        return "n/a" if value is None else format(value, fmt) + suffix

    for r in rows:
        note = r.get("note", "")
        if r.get("dense_floor_s"):
            dense = f"floor {r['dense_floor_s']:.2f} s, time/that {r['time_dense_floor']:.2f}x"
            note = f"{note}; as full forwards: {dense}"
        lines.append(
            f"| {r['metric']} | {r['evalcam_forwards']} / {cell(r['quantus_forwards'], 'd')} "
            f"| {r['evalcam_s']:.2f} | {r['floor_s']:.2f} | {cell(r['time_floor'], '.2f', 'x')} "
            f"| {cell(r['quantus_s'], '.2f')} "
            f"| {cell(r['ratio'], '.2f', 'x')}; {cell(r['wall_ratio'], '.2f', 'x')} "
            f"| {note.strip('; ')} |"
        )
    return "\n".join(lines)
