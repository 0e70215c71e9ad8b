"""Throughput benchmark: evalcam's methods against pytorch-grad-cam, Captum and TorchCAM, and floors.

``python -m evalcam bench [options]`` (or ``python benchmarks/bench_methods.py``). Every entry explains the
same batch, on the same model, target layer, device and batch size, for the same fixed target classes
(the model's top-1 predictions, computed once outside the timing), so the libraries do the same job:
one map per image. Timing protocol: ``--warmup`` untimed calls, then ``--repeats`` timed calls, each
bracketed by a device synchronisation; the table reports the median. Ratios are taken inside the same
process, against

- ``floor:forward``: a bare ``torch.no_grad()`` forward pass, the cost of classifying the batch;
- ``floor:forward+grad@layer``: a forward pass plus the gradient of the target scores down to the target
  layer's activation (a forward hook, ``torch.autograd.grad``), the least any gradient CAM must do;
- ``floor:forward+backward``: a forward pass plus the full backward pass to the input.

What each library returns differs and is part of its cost: evalcam keeps maps at feature resolution on
the device; pytorch-grad-cam returns min-max normalised maps resized to the input on the host (NumPy +
OpenCV); Captum and TorchCAM return feature-resolution tensors.

``--synthetic N`` additionally times N synthetic images end to end through the runner's batch step
(preprocessing from uint8, top-5 explanation, the weak-localization metric of the Grad-CAM paper, Table 1)
and extrapolates to the 50,000 images of ILSVRC2012 val. ``--random-weights`` builds the torchvision
architecture with random initialisation (throughput does not depend on weight values), for models such
as VGG16 whose weights are not available offline.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalcam.models.bundle import ModelBundle, Preprocess
from evalcam.models.layers import resolve_layer

# Default CAM layers of torchvision architectures built with --random-weights: the last convolutional
# feature map after its ReLU (VGG: conv5_3 + ReLU, 14x14 at 224 px, the Grad-CAM paper's layer).
TORCHVISION_LAYERS = {
    "vgg11": "features.19",
    "vgg13": "features.23",
    "vgg16": "features.29",
    "vgg19": "features.35",
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "resnet101": "layer4",
    "alexnet": "features.11",
    "mobilenet_v2": "features.18",
    "densenet121": "features",
    "efficientnet_b0": "features.8",
}
# GAP + linear heads, so CAM (Zhou et al. 2016) applies.
TORCHVISION_CLASSIFIERS = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "resnet101": "fc",
    "densenet121": "classifier",
}

# Methods whose cost grows with the number of channels (one forward pass per channel or channel chunk):
# left out of --quick unless named in --methods.
EXPENSIVE = {"scorecam", "ablationcam", "sscam", "iscam", "occlusion"}
ILSVRC_VAL_IMAGES = 50_000


@dataclass
class Entry:
    """One benchmarked callable: ``setup()`` returns ``(call(x, classes), cleanup())``."""

    name: str
    library: str
    setup: Callable[[], tuple[Callable[[torch.Tensor, torch.Tensor], Any], Callable[[], None]]]
    ours: str | None = None  # the evalcam method this entry is compared with (peers and ours)
    note: str = ""
    comparable: bool = True  # False: computes something else on this model; no "best peer" ratio


@dataclass
class Timing:
    name: str
    library: str
    ours: str | None
    median_s: float | None
    images_per_s: float | None
    repeats: int
    note: str = ""
    times_s: list[float] = field(default_factory=list)
    comparable: bool = True


# --- setup ---


def build_bundle(name: str, device: torch.device, random_weights: bool, layer: str | None) -> ModelBundle:
    """The model under test: evalcam's registry, or a randomly initialised torchvision architecture."""
    if random_weights:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"--random-weights needs a torchvision classification architecture, got {name!r}"
            )
        target = layer or TORCHVISION_LAYERS.get(name)
        if target is None:
            raise ValueError(f"no default target layer for {name}; pass --layer")
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        resolve_layer(model, target)
        bundle = ModelBundle(
            model=model,
            name=name,
            target_layer=target,
            preprocess=Preprocess(),
            categories=[str(i) for i in range(1000)],
            weights="random init (torchvision architecture, weights=None)",
            classifier=TORCHVISION_CLASSIFIERS.get(name),
        )
        bundle.model.to(device).eval()
        return bundle
    from evalcam.models import load_model

    return load_model(name, device=device, target_layer=layer)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return device


def synthetic_images(count: int, size: int, seed: int) -> list[torch.Tensor]:
    """uint8 ``[3, size, size]`` images: low-frequency colour fields plus noise, so that they look more like
    photos than white noise does (smooth regions, a few edges)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    noise = torch.rand(count, 3, size, size, generator=gen) * 0.15
    pixels = ((smooth + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return list(pixels.unbind(0))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- entries ---


def floor_entries(model: nn.Module, layer_name: str) -> list[Entry]:
    layer = resolve_layer(model, layer_name)

    def forward():
        def call(x, classes):
            with torch.no_grad():
                return model(x)

        return call, lambda: None

    def grad_at_layer():
        store: dict[str, torch.Tensor] = {}

        def hook(_m, _i, out):
            store["a"] = out

        handle = layer.register_forward_hook(hook)

        def call(x, classes):
            with torch.enable_grad():
                out = model(x)
                return torch.autograd.grad(out.gather(1, classes[:, None]).sum(), store["a"])[0]

        return call, handle.remove

    def full_backward():
        def call(x, classes):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                out = model(x)
                return torch.autograd.grad(out.gather(1, classes[:, None]).sum(), x)[0]

        return call, lambda: None

    return [
        Entry("floor:forward", "torch", forward, note="no_grad forward"),
        Entry("floor:forward+grad@layer", "torch", grad_at_layer, note=f"d score / d {layer_name}"),
        Entry("floor:forward+backward", "torch", full_backward, note="d score / d input"),
    ]


def ours_entry(name: str, bundle: ModelBundle, params: dict[str, Any]) -> Entry:
    def setup():
        from evalcam.methods import build_explainer

        explainer = build_explainer(name, bundle, **dict(params))

        def call(x, classes):
            return explainer.explain(x, classes).maps

        return call, lambda: None

    note = ", ".join(f"{k}={v}" for k, v in params.items())
    return Entry(name, "evalcam", setup, ours=name, note=note)


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _pgc_entry(ours: str, cls_name: str, model: nn.Module, layer_name: str) -> Entry:
    def setup():
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        _silence_pgc_progress()
        cam = getattr(pytorch_grad_cam, cls_name)(
            model=model, target_layers=[resolve_layer(model, layer_name)]
        )

        def call(x, classes):
            # Its API takes one target object per image (microseconds to build; timed with the call).
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes.tolist()])

        return call, cam.activations_and_grads.release

    return Entry(
        f"pytorch-grad-cam:{cls_name}", "pytorch-grad-cam", setup, ours=ours, note="maps resized on host"
    )


def _pgc_guided(ours: str, model: nn.Module) -> Entry:
    def setup():
        from pytorch_grad_cam import GuidedBackpropReLUModel

        # It swaps the model's ReLU modules in place and puts back new ones: run it on a copy.
        guided = GuidedBackpropReLUModel(copy.deepcopy(model), device=next(model.parameters()).device)

        def call(x, classes):
            # One image per call is its API.
            return [guided(x[i : i + 1], target_category=int(c)) for i, c in enumerate(classes.tolist())]

        return call, lambda: None

    return Entry(
        "pytorch-grad-cam:GuidedBackpropReLUModel", "pytorch-grad-cam", setup, ours=ours, note="per image"
    )


def _captum_entry(ours: str, cls_name: str, model: nn.Module, layer_name: str | None) -> Entry:
    def setup():
        import captum.attr

        cls = getattr(captum.attr, cls_name)
        method = cls(model) if layer_name is None else cls(model, resolve_layer(model, layer_name))
        kwargs: dict[str, Any] = {"relu_attributions": True} if cls_name == "LayerGradCam" else {}
        if cls_name == "Occlusion":
            # evalcam's defaults (conf/method/occlusion.yaml); Captum has no border-aligned last window.
            kwargs = {
                "sliding_window_shapes": (3, 45, 45),
                "strides": (3, 15, 15),
                "baselines": 0.0,
                "perturbations_per_eval": 64,
            }

        def call(x, classes):
            return method.attribute(x, target=classes, **kwargs)

        return call, lambda: None

    note, comparable = "", True
    if cls_name in ("GuidedBackprop", "GuidedGradCam"):
        # Captum guides ``nn.ReLU`` modules only; ReLU6 (MobileNet/EfficientNet-Lite) is not a subclass, so
        # on such models its "guided" gradient is the plain gradient and cheaper for that reason alone.
        unguided = sum(isinstance(m, nn.ReLU6) for m in model.modules())
        if unguided:
            note = f"not guided here: Captum skips the model's {unguided} ReLU6 (plain gradient)"
            comparable = False
    if cls_name == "Occlusion":
        note = "no border-aligned last row/column: fewer windows per image than evalcam"
    return Entry(f"captum:{cls_name}", "captum", setup, ours=ours, note=note, comparable=comparable)


def _torchcam_entry(ours: str, cls_name: str, model: nn.Module, layer_name: str, **kw: Any) -> Entry:
    def setup():
        import torchcam.methods
        from torchcam.methods.gradient import _GradCAM

        extractor = getattr(torchcam.methods, cls_name)(model, target_layer=layer_name, **kw)
        needs_grad = isinstance(extractor, _GradCAM)

        def call(x, classes):
            with torch.set_grad_enabled(needs_grad):
                scores = model(x)
            return extractor(class_idx=classes.tolist(), scores=scores)

        return call, extractor.remove_hooks

    return Entry(f"torchcam:{cls_name}", "torchcam", setup, ours=ours)


# evalcam method (normalised name) -> peers: (library, class name)
PEERS: dict[str, list[tuple[str, str]]] = {
    "gradcam": [("pgc", "GradCAM"), ("captum", "LayerGradCam"), ("torchcam", "GradCAM")],
    "gradcampp": [("pgc", "GradCAMPlusPlus"), ("torchcam", "GradCAMpp")],
    "gradcamppapprox": [("pgc", "GradCAMPlusPlus"), ("torchcam", "GradCAMpp")],
    "xgradcam": [("pgc", "XGradCAM"), ("torchcam", "XGradCAM")],
    "hirescam": [("pgc", "HiResCAM")],
    "gradcamelementwise": [("pgc", "GradCAMElementWise")],
    "layercam": [("pgc", "LayerCAM"), ("torchcam", "LayerCAM")],
    "scorecam": [("pgc", "ScoreCAM"), ("torchcam", "ScoreCAM")],
    "ablationcam": [("pgc", "AblationCAM")],
    "eigencam": [("pgc", "EigenCAM")],
    "eigengradcam": [("pgc", "EigenGradCAM")],
    "fullgrad": [("pgc", "FullGrad")],
    "cam": [("torchcam", "CAM")],
    "guidedbackprop": [("captum", "GuidedBackprop"), ("pgc", "GuidedBackpropReLUModel")],
    "guidedbp": [("captum", "GuidedBackprop"), ("pgc", "GuidedBackpropReLUModel")],
    "guidedgradcam": [("captum", "GuidedGradCam")],
    "occlusion": [("captum", "Occlusion")],
}


def available_libraries() -> dict[str, str | None]:
    """Peer library -> None when importable, else why not."""
    status: dict[str, str | None] = {}
    for key, module in (
        ("pgc", "pytorch_grad_cam"),
        ("captum", "captum.attr"),
        ("torchcam", "torchcam.methods"),
    ):
        try:
            __import__(module)
            status[key] = None
        except ImportError as err:
            status[key] = f"{module} not installed ({err})"
    return status


def peer_entries(ours: str, bundle: ModelBundle, libraries: dict[str, str | None]) -> list[Entry]:
    entries = []
    model, layer = bundle.model, str(bundle.target_layer)
    for lib, cls_name in PEERS.get(_norm(ours), []):
        if libraries.get(lib) is not None:
            continue
        if lib == "pgc":
            if cls_name == "GuidedBackpropReLUModel":
                entries.append(_pgc_guided(ours, model))
            else:
                entries.append(_pgc_entry(ours, cls_name, model, layer))
        elif lib == "captum":
            entries.append(
                _captum_entry(
                    ours, cls_name, model, None if cls_name in ("GuidedBackprop", "Occlusion") else layer
                )
            )
        elif lib == "torchcam":
            kw: dict[str, Any] = {}
            if cls_name == "CAM":
                if not bundle.classifier:
                    continue
                kw["fc_layer"] = bundle.classifier
            entries.append(_torchcam_entry(ours, cls_name, model, layer, **kw))
    return entries


def _autocast_entry(entry: Entry, device: torch.device, dtype: torch.dtype) -> Entry:
    def setup():
        call, cleanup = entry.setup()

        def wrapped(x, classes):
            with torch.autocast(device_type=device.type, dtype=dtype):
                return call(x, classes)

        return wrapped, cleanup

    return Entry(
        entry.name, entry.library, setup, entry.ours, ", ".join(filter(None, [entry.note, str(dtype)]))
    )


def _silence_pgc_progress() -> None:
    """pytorch-grad-cam's ScoreCAM/AblationCAM draw a tqdm bar per image; the bars would bury the table."""
    import pytorch_grad_cam.ablation_cam as ablation
    import pytorch_grad_cam.score_cam as score

    class _Quiet:
        @staticmethod
        def tqdm(iterable, *args, **kwargs):
            return iterable

    score.tqdm = _Quiet  # type: ignore[assignment]
    if hasattr(ablation, "tqdm"):
        ablation.tqdm = _Quiet  # type: ignore[assignment]


# --- timing ---


def time_entries(
    entries: Sequence[Entry],
    x: torch.Tensor,
    classes: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
    budget_s: float,
    progress: Callable[[str], None] | None = None,
) -> list[Timing]:
    """Median wall time per entry over ``repeats`` timed rounds after ``warmup`` untimed ones.

    Rounds are interleaved (every entry once per round) so that a change in machine load during the run
    hits every entry alike and the in-run ratios stay meaningful. Each call is set up and torn down on
    its own, so no entry's hooks are attached while another runs. Budget: an entry whose warm call times
    ``repeats`` exceeds ``budget_s`` gets fewer timed rounds (at least one); one whose very first call
    alone exceeds ``budget_s`` (perturbation methods: thousands of forward passes per call, so one-time
    start-up costs are negligible in it) keeps that call as its single measurement.
    """
    batch = x.shape[0]
    warmup = max(1, warmup)
    times: list[list[float]] = [[] for _ in entries]
    allowed = [repeats] * len(entries)
    notes = [e.note for e in entries]
    failed: list[str | None] = [None] * len(entries)
    done_early = [False] * len(entries)
    for round_ in range(warmup + repeats):
        timed = round_ >= warmup
        for i, entry in enumerate(entries):
            if failed[i] is not None or done_early[i] or (timed and len(times[i]) >= allowed[i]):
                continue
            try:
                call, cleanup = entry.setup()
            except Exception as err:  # a peer that cannot handle this model is reported, not fatal
                failed[i] = f"setup failed: {_short(err)}"
                continue
            try:
                synchronize(device)
                start = time.perf_counter()
                call(x, classes)
                synchronize(device)
                elapsed = time.perf_counter() - start
            except Exception as err:
                failed[i] = f"failed: {_short(err)}"
                continue
            finally:
                cleanup()
            if timed:
                times[i].append(elapsed)
            elif round_ == 0 and elapsed > budget_s:
                times[i].append(elapsed)
                done_early[i] = True
                notes[i] = ", ".join(filter(None, [notes[i], "budget: 1 run, no warm-up"]))
            elif round_ == warmup - 1 and elapsed * repeats > budget_s:
                allowed[i] = max(1, int(budget_s // max(elapsed, 1e-9)))
                notes[i] = ", ".join(filter(None, [notes[i], f"budget: {allowed[i]} run(s)"]))
        if progress is not None:
            progress(f"round {round_ + 1}/{warmup + repeats} ({'timed' if timed else 'warm-up'}) done")
    timings = []
    for i, entry in enumerate(entries):
        if failed[i] is not None or not times[i]:
            note = failed[i] or "no measurement"
            timings.append(
                Timing(
                    entry.name,
                    entry.library,
                    entry.ours,
                    None,
                    None,
                    len(times[i]),
                    note,
                    comparable=entry.comparable,
                )
            )
            continue
        median = statistics.median(times[i])
        timings.append(
            Timing(
                entry.name,
                entry.library,
                entry.ours,
                median,
                batch / median,
                len(times[i]),
                notes[i],
                times[i],
                entry.comparable,
            )
        )
    return timings


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    return text[:140]


# --- end to end ---


def run_synthetic(
    bundle: ModelBundle,
    method: str,
    params: dict[str, Any],
    count: int,
    batch_size: int,
    size: int,
    device: torch.device,
) -> dict[str, Any]:
    """N synthetic images through the runner's per-batch step (preprocess + top-5 maps + weak_loc)."""
    from evalcam.data.types import Sample
    from evalcam.methods import build_explainer
    from evalcam.metrics import build_metrics
    from evalcam.metrics.base import explain_batch
    from evalcam.runner import evaluate_batch

    explainer = build_explainer(method, bundle, **dict(params))
    metrics = build_metrics({"weak_loc": {}}, device)
    topk = max([m.pred_topk for m in metrics] + [5])
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
    evaluate_batch(samples_for(0, min(batch_size, count)), bundle, explainer, metrics, topk, False, device)
    synchronize(device)
    stages = {"preprocess": 0.0, "explain": 0.0, "metric": 0.0}
    total = 0.0
    for start in range(0, count, batch_size):
        samples = samples_for(start, min(start + batch_size, count))
        for metric in metrics:
            metric.reset()
        synchronize(device)
        t0 = time.perf_counter()
        inputs = bundle.preprocess([s.image for s in samples], device)
        synchronize(device)
        t1 = time.perf_counter()
        batch = explain_batch(samples, inputs, bundle, explainer, topk, need_gt=False)
        synchronize(device)
        t2 = time.perf_counter()
        for metric in metrics:
            metric.update(batch)
        synchronize(device)
        t3 = time.perf_counter()
        stages["preprocess"] += t1 - t0
        stages["explain"] += t2 - t1
        stages["metric"] += t3 - t2
    # The same work through the runner's own batch function, so the figure includes its row building.
    synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, count, batch_size):
        evaluate_batch(
            samples_for(start, min(start + batch_size, count)),
            bundle,
            explainer,
            metrics,
            topk,
            False,
            device,
        )
    synchronize(device)
    total = time.perf_counter() - t0
    per_second = count / total
    return {
        "method": method,
        "images": count,
        "batch_size": batch_size,
        "image_size": size,
        "topk": topk,
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
    from evalcam.metrics import METRICS, build_metrics
    from evalcam.metrics.base import explain_batch

    if "faithfulness" not in METRICS:
        return {"available": False, "note": "evalcam.metrics.METRICS has no 'faithfulness' metric yet"}
    from evalcam.data.types import Sample
    from evalcam.methods import build_explainer

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
        "available": True,
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
            out["captum_occlusion"] = {"note": f"failed: {_short(err)}"}
    return out


# --- report ---


def format_table(timings: Sequence[Timing]) -> str:
    """Markdown table with ratios: time / forward floor, time / gradient floor, fastest peer / ours."""
    by_name = {t.name: t for t in timings}
    fwd = by_name.get("floor:forward")
    grad = by_name.get("floor:forward+grad@layer")
    fastest_peer: dict[str, Timing] = {}
    for t in timings:
        if t.library not in ("evalcam", "torch") and t.ours and t.median_s is not None and t.comparable:
            best = fastest_peer.get(t.ours)
            if best is None or t.median_s < (best.median_s or math.inf):
                fastest_peer[t.ours] = t
    lines = [
        "| entry | library | images/s | ms/batch | x forward | x fwd+grad | best peer / ours | runs | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ratio(t: Timing, floor: Timing | None) -> str:
        if t.median_s is None or floor is None or floor.median_s is None:
            return ""
        return f"{t.median_s / floor.median_s:.2f}"

    for t in timings:
        vs_peer = ""
        if t.library == "evalcam" and t.median_s is not None and t.name in fastest_peer:
            peer = fastest_peer[t.name]
            assert peer.median_s is not None
            vs_peer = f"{peer.median_s / t.median_s:.2f} ({peer.name})"
        ips = _rate(t.images_per_s) if t.images_per_s is not None else "n/a"
        ms = f"{t.median_s * 1000:.1f}" if t.median_s is not None else ""
        lines.append(
            f"| {t.name} | {t.library} | {ips} | {ms} | {ratio(t, fwd)} | {ratio(t, grad)} | {vs_peer} | "
            f"{t.repeats} | {t.note} |"
        )
    return "\n".join(lines)


def _rate(value: float) -> str:
    """Three significant figures for slow entries (perturbation methods run at hundredths of an image/s)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def format_faithfulness(faith: dict[str, Any]) -> str:
    if not faith["available"]:
        return f"faithfulness metric: not measured ({faith['note']})"
    lines = [
        f"faithfulness metric (occlusion, {faith['windows_per_image']} windows/image) on Grad-CAM maps, "
        f"{faith['images']} image(s), {faith['runs']} run(s): {faith['images_per_s']:.3f} images/s "
        f"= {faith.get('occluded_inputs_per_s', float('nan')):.1f} occluded inputs/s"
    ]
    dense = faith.get("dense")
    if dense:
        lines.append(
            f"  same metric, incremental=false (a full forward per window): "
            f"{dense.get('occluded_inputs_per_s', float('nan')):.1f} occluded inputs/s; "
            f"incremental speed-up {dense['median_s'] / faith['median_s']:.2f}x"
        )
    ref = faith.get("captum_occlusion")
    if ref and "median_s" in ref:
        lines.append(
            f"  reference captum Occlusion, same window/stride ({ref['windows_per_image']} windows/image): "
            f"{ref['images_per_s']:.3f} images/s = {ref['occluded_inputs_per_s']:.1f} occluded inputs/s"
        )
        if faith.get("occluded_inputs_per_s"):
            lines.append(
                "  ours / captum, occluded inputs per second: "
                f"{faith['occluded_inputs_per_s'] / ref['occluded_inputs_per_s']:.2f}x"
            )
    elif ref:
        lines.append(f"  reference captum Occlusion: {ref['note']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evalcam bench",
        description="images/s of evalcam's methods vs pytorch-grad-cam, Captum, TorchCAM and "
        "forward/backward floors (same model, batch, device, targets).",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="evalcam model name or torchvision arch"
    )
    parser.add_argument("--random-weights", action="store_true", help="torchvision architecture, random init")
    parser.add_argument("--layer", default=None, help="target layer (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32, 4 with --quick")
    parser.add_argument("--methods", default=None, help="comma-separated evalcam methods (default: all)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per entry (default 10, 3 quick)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3, 1 quick)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per entry before repeats are cut")
    parser.add_argument("--no-peers", action="store_true", help="only evalcam and the floors")
    parser.add_argument("--autocast", default=None, help="bf16 | fp16: evalcam methods and floors only")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="also time N images end to end")
    parser.add_argument("--synthetic-size", type=int, default=224, help="side of the synthetic images")
    parser.add_argument("--synthetic-method", default="gradcam", help="method for --synthetic")
    parser.add_argument(
        "--faith-images", type=int, default=None, help="images for the occlusion timing (default 4, 1 quick)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats, cheap methods only")
    parser.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = parser.parse_args(list(argv) if argv is not None else None)
    quick = args.quick
    args.batch_size = args.batch_size or (4 if quick else 32)
    args.repeats = args.repeats or (3 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.budget = args.budget or (10.0 if quick else 60.0)
    args.faith_images = args.faith_images if args.faith_images is not None else (1 if quick else 4)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; return (and with --json write) the results."""
    args = parse_args(argv)
    # Captum warns on every call that it set requires_grad and hooked ReLUs; the table is the output.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\..*")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    bundle = build_bundle(args.model, device, args.random_weights, args.layer)
    layer = str(bundle.target_layer)

    from evalcam.methods import METHODS, CAMExplainer

    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; available: {', '.join(sorted(METHODS))}")
    else:
        names = [m for m in METHODS if not (args.quick and m in EXPENSIVE)]
    skipped_expensive = [m for m in METHODS if args.quick and not args.methods and m in EXPENSIVE]

    images = synthetic_images(args.batch_size, 224, seed=0)
    x = bundle.preprocess(images, device)
    with torch.no_grad():
        classes = bundle.model(x).argmax(1)

    libraries = available_libraries() if not args.no_peers else {}
    params: dict[str, Any] = {"autocast": args.autocast} if args.autocast else {}
    entries = floor_entries(bundle.model, layer)
    for name in names:
        cls = METHODS[name][0]
        method_params = params if issubclass(cls, CAMExplainer) else {}
        entries.append(ours_entry(name, bundle, method_params))
        if not args.no_peers:
            entries.extend(peer_entries(name, bundle, libraries))

    header = {
        "device": device_name(device),
        "torch": torch.__version__,
        "model": bundle.name + (" (random init)" if args.random_weights else ""),
        "target_layer": layer,
        "batch_size": args.batch_size,
        "input": f"{tuple(x.shape[1:])}",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "autocast": args.autocast or "none (fp32)",
        "command": "python -m evalcam bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print("# evalcam throughput benchmark")
    for key, value in header.items():
        print(f"- {key}: {value}")
    for lib, why in libraries.items():
        if why:
            print(f"- note: peer {lib} skipped: {why}")
    if skipped_expensive:
        print(
            f"- note: --quick leaves out {', '.join(skipped_expensive)} (name them in --methods to time them)"
        )

    if args.autocast:
        from evalcam.methods.base import parse_autocast

        dtype = parse_autocast(args.autocast)
        if dtype is not None:
            # The floors run under the same autocast as evalcam's methods (peers stay in fp32).
            entries = [_autocast_entry(e, device, dtype) if e.library == "torch" else e for e in entries]
    timings = time_entries(
        entries,
        x,
        classes,
        device,
        args.warmup,
        args.repeats,
        args.budget,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
    )
    print()
    print(format_table(timings))

    result: dict[str, Any] = {"header": header, "timings": [asdict(t) for t in timings]}
    print()
    if args.faith_images > 0:
        n = min(args.faith_images, x.shape[0])
        faith = time_faithfulness(
            bundle,
            x[:n],
            images[:n],
            classes[:n],
            device,
            args.repeats,
            args.budget,
            with_captum=not (args.no_peers or args.quick) and libraries.get("captum") is None,
        )
        result["faithfulness"] = faith
        print(format_faithfulness(faith))
    else:
        print("faithfulness metric: not measured (--faith-images 0)")

    if args.synthetic:
        syn = run_synthetic(
            bundle,
            args.synthetic_method,
            params,
            args.synthetic,
            args.batch_size,
            args.synthetic_size,
            device,
        )
        result["synthetic"] = syn
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in syn["stage_seconds"].items())
        print(
            f"\nend to end ({syn['method']}, preprocess + top-{syn['topk']} maps + weak_loc), "
            f"{syn['images']} synthetic {syn['image_size']}px images, batch {syn['batch_size']}: "
            f"{syn['images_per_s']:.1f} images/s ({syn['seconds']:.1f} s); stages: {stages}; "
            f"extrapolated ILSVRC2012 val (50k): {syn['ilsvrc_val_minutes']:.1f} min"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
