"""Throughput of the issue-16 methods against their peers: each Captum-backed method against Captum called
directly with the same arguments (batched for the deterministic methods, one seeded call per image for the
sampling ones, as the adapter does), LRP against zennit's own attributor, Smooth Grad-CAM++ against TorchCAM's
``SmoothGradCAMpp`` and FullGrad against pytorch-grad-cam's ``FullGrad``.

``bench_rows`` returns one dict per method: ``ours_s``/``peer_s`` (best of ``repeats`` wall-clock seconds for
one batch) and ``ratio = ours_s / peer_s`` (the adapter's overhead; the issue asks <= 1.1 for Captum).
``python benchmarks/attribution_overhead.py`` prints them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from evalcam.methods import build_explainer
from evalcam.methods.captum_methods import CaptumAttribution, unshare_activations
from evalcam.models.bundle import ModelBundle

# Small sample and step counts: the ratio, not the absolute time, is the measurement.
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"nt_samples": 8},
    "input_x_gradient": {},
    "deeplift": {},
    "deepliftshap": {"num_baselines": 4},
    "expected_gradients": {"n_samples": 8, "num_baselines": 4},
    "kernelshap": {"n_samples": 50},
    "lime": {"n_samples": 50},
    "lrp": {},
    "smoothgradcampp": {"num_samples": 4},
    "fullgrad": {},
}


def _best(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (allocator, lazy imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _captum_peer(explainer: CaptumAttribution, images: torch.Tensor, classes: torch.Tensor) -> Callable:
    model = unshare_activations(explainer.model, images) if explainer.unshare else explainer.model

    def run() -> torch.Tensor:
        if not explainer.stochastic:
            kwargs = {**explainer.attribute_arguments(images), **explainer.attribute_kwargs}
            return explainer._attributor(model).attribute(images, target=classes.tolist(), **kwargs)
        out = []
        for i in range(images.shape[0]):
            one = images[i : i + 1]
            kwargs = {**explainer.attribute_arguments(one), **explainer.attribute_kwargs}
            torch.manual_seed(explainer.seed)
            out.append(explainer._attributor(model).attribute(one, target=int(classes[i]), **kwargs))
        return torch.cat(out)

    return run


def _other_peer(
    name: str, bundle: ModelBundle, images: torch.Tensor, classes: torch.Tensor
) -> Callable | None:
    model = bundle.model
    if name == "lrp":
        from zennit.attribution import Gradient

        explainer = build_explainer("lrp", bundle)
        from evalcam.methods.lrp import batchnorm_pairs

        pairs = batchnorm_pairs(model, images)
        onehot = torch.eye(bundle_classes(model, images))[classes]

        def lrp() -> torch.Tensor:
            with Gradient(model=model, composite=explainer._composite(pairs)) as attributor:
                return attributor(images.clone().requires_grad_(True), onehot)[1]

        return lrp
    if name == "smoothgradcampp":
        from torchcam.methods import SmoothGradCAMpp

        def torchcam() -> Any:
            with SmoothGradCAMpp(model, bundle.target_layer, num_samples=4) as extractor:
                return extractor(classes.tolist(), model(images))

        return torchcam
    if name == "fullgrad":
        from pytorch_grad_cam import FullGrad
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc() -> Any:
            cam = FullGrad(model=model, target_layers=[])
            try:
                return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
            finally:
                cam.activations_and_grads.release()
                model.zero_grad(set_to_none=True)

        return pgc
    return None


def bundle_classes(model: torch.nn.Module, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(images[:1]).shape[1])


def bench_rows(
    bundle: ModelBundle, images: torch.Tensor, methods: Sequence[str] | None = None, repeats: int = 3
) -> list[dict[str, Any]]:
    """One row per method: ``method``, ``peer``, ``ours_s``, ``peer_s``, ``ratio`` (see module docstring)."""
    images = images.to(bundle.device)
    with torch.no_grad():
        classes = bundle.model(images).argmax(1)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's per-call hook warnings
        for name in methods or list(QUICK_PARAMS):
            explainer = build_explainer(name, bundle, **QUICK_PARAMS.get(name, {}))
            if isinstance(explainer, CaptumAttribution):
                peer, peer_name = (
                    _captum_peer(explainer, images, classes),
                    f"captum.attr.{explainer.cls.__name__}",
                )
            else:
                peer = _other_peer(name, bundle, images, classes)
                peer_name = {"lrp": "zennit", "smoothgradcampp": "torchcam", "fullgrad": "pytorch-grad-cam"}[
                    name
                ]
            if peer is None:
                continue
            ours_s = _best(lambda e=explainer: e(images, classes), repeats)
            peer_s = _best(peer, repeats)
            rows.append(
                {
                    "method": name,
                    "peer": peer_name,
                    "ours_s": ours_s,
                    "peer_s": peer_s,
                    "ratio": ours_s / peer_s,
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<22}{'peer':<34}{'ours s':>9}{'peer s':>9}{'ratio':>8}"]
    for r in rows:
        lines.append(
            f"{r['method']:<22}{r['peer']:<34}{r['ours_s']:>9.3f}{r['peer_s']:>9.3f}{r['ratio']:>8.2f}"
        )
    return "\n".join(lines)
