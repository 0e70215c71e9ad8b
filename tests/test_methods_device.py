"""Methods on a CUDA device (skipped without one): every tensor stays on the model's device, maps agree
with the CPU ones, half-precision autocast stays close to float32, Score-CAM's chunking bounds memory."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import corr

from evalcam.methods import METHODS, TopK, build_explainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Lite0 is a CNN: the attention methods, which refuse it, are left out.
NAMES = sorted(
    n for n in METHODS if n not in ("center", "random", "attention_rollout", "transformer_attribution")
)
# Score-CAM on CPU at head_act would take 1280 forward passes per image; an inner layer keeps it quick.
PARAMS = {"scorecam": {"target_layer": "blocks.4"}}
# Captum draws these methods' random numbers on the model's device: seeded CPU and CUDA draws differ, so
# only device placement is compared (their seeded equality with Captum is checked on the CPU).
DEVICE_RANDOM = {"smoothgrad", "expected_gradients", "kernelshap", "lime"}


@pytest.fixture(scope="module")
def gpu(lite0):
    return dataclasses.replace(lite0, model=copy.deepcopy(lite0.model).cuda().eval())


@pytest.fixture
def exact_float32():
    """TF32 convolutions (cuDNN's default) perturb pixel-level gradients; the CPU comparison wants fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def inputs(lite0, photos):
    return lite0.preprocess(list(photos.values()), "cpu")


@pytest.mark.parametrize("name", [*NAMES, "pgc/GradCAM"])
def test_gpu_maps_stay_on_device_and_match_cpu(lite0, gpu, inputs, name, exact_float32):
    if name.startswith("pgc/"):
        pytest.importorskip("pytorch_grad_cam")
    params = PARAMS.get(name, {})
    on_cpu = build_explainer(name, lite0, **params).explain(inputs, TopK(2))
    on_gpu = build_explainer(name, gpu, **params).explain(inputs.cuda(), TopK(2))
    tensors = [on_gpu.maps, on_gpu.logits, on_gpu.classes, *on_gpu.extra.values()]
    assert all(t.device.type == "cuda" for t in tensors)
    assert torch.equal(on_gpu.classes.cpu(), on_cpu.classes)
    if name in DEVICE_RANDOM:
        return
    for b in range(len(inputs)):
        for k in range(2):
            ours, reference = on_gpu.maps[b, k].cpu(), on_cpu.maps[b, k]
            if reference.abs().amax() == 0:  # e.g. counterfactual maps of a confident class
                assert ours.abs().amax() <= 1e-6
            else:
                assert corr(ours, reference) > 0.999, (b, k)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize(
    "name",
    ["gradcam", "gradcampp", "layercam", "cam", "eigencam", "scorecam", "ablationcam", "guided_gradcam"],
)
def test_gpu_autocast_close_to_float32(gpu, inputs, name, dtype):
    full = build_explainer(name, gpu).explain(inputs.cuda(), TopK(1))
    half = build_explainer(name, gpu, autocast=dtype).explain(inputs.cuda(), full.classes)
    assert half.maps.dtype == torch.float32 and half.maps.device.type == "cuda"
    for b in range(len(inputs)):
        assert corr(full.maps[b, 0], half.maps[b, 0]) > 0.95, b


def test_scorecam_chunk_size_bounds_gpu_memory(gpu, inputs):
    images = inputs.cuda()
    peaks, maps = [], []
    for chunk in (32, 512):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        maps.append(build_explainer("scorecam", gpu, chunk_size=chunk)(images, TopK(1)))
        peaks.append(torch.cuda.max_memory_allocated())
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-3, atol=1e-4)
    assert peaks[0] < peaks[1] / 4
