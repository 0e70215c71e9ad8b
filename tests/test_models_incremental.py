"""Incremental re-inference (evalcam.models.incremental) must give what a full forward of the occluded
input gives, on architectures that exercise every rule: TF-style zero padding, depthwise and strided
convolutions and residual additions (EfficientNet-Lite0), in-place ReLU, ``+=`` and padded max pooling
(ResNet), dilation, and layers it does not know (which run densely)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from evalcam.methods.occlusion import occlusion_boxes
from evalcam.models.incremental import IncrementalModel, incremental_model


def _full_forward(model: nn.Module, x: torch.Tensor, box, fill: torch.Tensor) -> torch.Tensor:
    y0, y1, x0, x1 = box
    occluded = x.clone()
    occluded[..., y0:y1, x0:x1] = fill
    with torch.no_grad():
        return model(occluded)


class Dilated(nn.Module):
    """Dilated and asymmetric convolutions, a channel-broadcast product and a layer with no rule."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(2, 1), dilation=(2, 1))
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.up = nn.Upsample(scale_factor=2)
        self.c = nn.Conv2d(8, 4, 3, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = h + self.b(h)
        h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        return self.fc(self.c(self.up(h)).amax((2, 3)))


@pytest.fixture(scope="module")
def lite0(lite0):
    """The session's EfficientNet-Lite0 bundle's network (this module needs the bare nn.Module)."""
    return lite0.model.eval()


def _check(model, x, boxes, fill, atol):
    executor = IncrementalModel.build(model)
    assert executor is not None
    cache = executor.clean_pass(x)
    with torch.no_grad():
        assert torch.equal(executor.output_of(cache), model(x))
    for box in boxes:
        ours = executor.occluded(cache, box, fill)
        full = _full_forward(model, x, box, fill)
        assert ours.shape == full.shape
        assert torch.allclose(ours, full, atol=atol, rtol=0), (box, (ours - full).abs().max())


def test_lite0_matches_full_forward_for_every_kind_of_window(lite0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    boxes = occlusion_boxes((224, 224), 45, 15)
    # corners, borders, centre, and a window straddling stride-2 phase boundaries
    picks = [
        boxes[0],
        boxes[len(boxes) - 1],
        boxes[6],
        boxes[len(boxes) // 2],
        (101, 146, 3, 48),
        (0, 224, 0, 7),
    ]
    fill = torch.tensor([0.3, -1.0, 2.0]).view(1, 3, 1, 1)
    _check(lite0, x, picks, fill, atol=1e-4)


def test_resnet_with_inplace_relu_and_padded_max_pool_matches_full_forward():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    boxes = [(0, 16, 0, 16), (40, 56, 33, 49), (80, 96, 0, 96), (1, 2, 94, 96)]
    _check(model, x, boxes, torch.zeros(1, 3, 1, 1), atol=1e-4)
    # The model itself is left as it was: its ReLUs are still in-place.
    assert model.relu.inplace


def test_dilation_asymmetric_kernels_and_unknown_layers_match_full_forward():
    model = Dilated().eval()
    x = torch.randn(3, 3, 31, 27, generator=torch.Generator().manual_seed(4))
    boxes = [(0, 5, 0, 5), (13, 18, 20, 27), (26, 31, 11, 16), (0, 31, 0, 1)]
    _check(model, x, boxes, torch.full((1, 3, 1, 1), -0.5), atol=1e-5)


def test_untraceable_model_has_no_incremental_executor():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    assert incremental_model(DataDependent()) is None


def test_a_window_changes_only_its_receptive_field(lite0):
    """The point of the method: a corner window leaves most of an early map untouched."""
    executor = incremental_model(lite0)
    cache = executor.clean_pass(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5)))
    seen = {}

    def spy(node, values, clean, rows):
        value = original(node, values, clean, rows)
        seen[node.name] = value
        return value

    original = executor._step
    executor._step = spy
    try:
        executor.occluded(cache, (0, 45, 0, 45), torch.zeros(1, 3, 1, 1))
    finally:
        del executor._step
    stem = seen["stem_act"]
    assert stem.box == (0, 23, 0, 23)  # stride 2, 3x3 kernel, TF "same" padding: 45 px -> 23 outputs
    assert stem.patch.shape[-2:] == (23, 23)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_incremental_occlusion_on_cuda_matches_full_forward():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().cuda()
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(2)).cuda()
    boxes = [(0, 16, 0, 16), (40, 56, 33, 49), (80, 96, 0, 96)]
    # cuDNN picks different algorithms for crops and full maps: round-off only.
    _check(model, x, boxes, torch.zeros(1, 3, 1, 1, device="cuda"), atol=1e-3)


def test_incremental_auto_means_a_cpu_with_few_threads_and_bad_values_fail_at_construction():
    from evalcam.methods.occlusion import AUTO_MAX_THREADS, Occlusion, use_incremental
    from evalcam.metrics.faithfulness import OcclusionFaithfulness

    threads = torch.get_num_threads()
    try:
        for count in (1, AUTO_MAX_THREADS):
            torch.set_num_threads(count)
            assert use_incremental("auto", torch.device("cpu"))
            assert not use_incremental("auto", torch.device("cuda"))
        # more threads: full batched forwards use them; the incremental path runs on one
        torch.set_num_threads(AUTO_MAX_THREADS + 1)
        assert not use_incremental("auto", torch.device("cpu"))
        assert use_incremental(True, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert use_incremental(True, torch.device("cuda")) and not use_incremental(False, torch.device("cpu"))
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        OcclusionFaithfulness(incremental="sometimes")
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        Occlusion(nn.Conv2d(3, 1, 1), incremental="yes")


def _paste(x: torch.Tensor, rows, boxes, patch: torch.Tensor) -> torch.Tensor:
    out = x[list(rows)].clone()
    for j, (y0, y1, x0, x1) in enumerate(boxes):
        out[j, :, y0:y1, x0:x1] = patch[j]
    return out


@pytest.mark.parametrize("arch", ["lite0", "resnet18", "dilated"])
def test_copies_of_different_images_changed_at_different_places_match_full_forwards(arch, lite0):
    """One call, one box per copy (all of one size) and the cached image each copy belongs to: what the
    same step of several images' games needs. Borders, corners, a box in the padding's reach and two
    copies of one image are all in it."""
    if arch == "lite0":
        model, size, side = lite0, 224, 20
    elif arch == "resnet18":
        torch.manual_seed(0)
        model, size, side = torchvision.models.resnet18(weights=None, num_classes=10).eval(), 96, 12
    else:
        model, size, side = Dilated().eval(), 27, 5
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))
    executor = IncrementalModel.build(model)
    cache = executor.clean_pass(x)
    far = size - side
    boxes = [
        (0, side, 0, side),
        (far // 2, far // 2 + side, far, size),
        (far, size, 3, 3 + side),
        (5, 5 + side, 9, 9 + side),
    ]
    rows = torch.tensor([2, 0, 1, 2])
    patch = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(8))
    ours = executor.patched(cache, boxes, patch, rows=rows)
    with torch.no_grad():
        full = model(_paste(x, rows.tolist(), boxes, patch))
        unchanged = model(x[rows])
    assert ours.shape == full.shape
    assert torch.allclose(ours, full, atol=1e-4, rtol=0), (ours - full).abs().max()
    assert float((full - unchanged).abs().max()) > 1e-3  # the patches do change the outputs
    with pytest.raises(ValueError, match="one size"):
        executor.patched(cache, [(0, 2, 0, 2), (0, 3, 0, 3)], torch.zeros(2, 3, 2, 2), rows=rows[:2])


def test_chains_of_several_images_step_together_and_resume_after_a_refresh(lite0):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(9)
    state = torch.randn(4, 3, 96, 96, generator=g)
    executor = IncrementalModel.build(model)
    cache = executor.chain_pass(state)
    for step, rows in enumerate([[0, 1, 2, 3], [1, 3], [3, 0, 2], [0, 1, 2, 3]]):
        corners = torch.randint(0, 96 - 10, (len(rows), 2), generator=g).tolist()
        boxes = [(y, y + 10, c, c + 10) for y, c in corners]
        patch = torch.randn(len(rows), 3, 10, 10, generator=g)
        for j, (y0, y1, x0, x1) in enumerate(boxes):
            state[rows[j], :, y0:y1, x0:x1] = patch[j]
        whole = rows == [0, 1, 2, 3]
        ours = executor.advance(cache, boxes, patch, rows=None if whole else torch.tensor(rows))
        with torch.no_grad():
            full = model(state[rows])
        assert torch.allclose(ours, full, atol=1e-4, rtol=0), (step, (ours - full).abs().max())
        assert torch.equal(executor.input_of(cache), state)  # every row holds its own latest copy
        if step == 1:  # rows 0 and 2 jump to unrelated images, as after a step run as a full forward
            state[[0, 2]] = torch.randn(2, 3, 96, 96, generator=g)
            executor.refresh_rows(cache, torch.tensor([0, 2]), state[[0, 2]])
    with pytest.raises(ValueError, match="distinct"):
        executor.advance(cache, (0, 2, 0, 2), torch.zeros(2, 3, 2, 2), rows=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="rows"):
        executor.advance(cache, (0, 2, 0, 2), torch.zeros(2, 3, 2, 2))


def test_occluded_outputs_split_images_over_the_threads_with_the_same_outputs(monkeypatch):
    import evalcam.methods.occlusion as occlusion
    import evalcam.models.incremental as incremental

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    boxes = occlusion_boxes((64, 64), 16, 12)
    fill = torch.zeros(1, 3, 1, 1)
    pools = []

    class CountingPool(incremental.ThreadPoolExecutor):
        def __init__(self, workers: int) -> None:
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(incremental, "ThreadPoolExecutor", CountingPool)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        clean_1, occluded_1 = occlusion.occluded_outputs(model, x, boxes, fill, incremental=True)
        assert pools == []
        torch.set_num_threads(2)
        clean_2, occluded_2 = occlusion.occluded_outputs(model, x, boxes, fill, incremental=True)
        assert pools == [2]  # 5 images: groups of 3 and 2, one worker each
        assert torch.get_num_threads() == 2  # the workers' one intra-op thread is given back
    finally:
        torch.set_num_threads(threads)
    dense_clean, dense = occlusion.occluded_outputs(model, x, boxes, fill, incremental=False)
    torch.testing.assert_close(clean_2, clean_1, rtol=0, atol=1e-5)
    torch.testing.assert_close(occluded_2, occluded_1, rtol=0, atol=1e-5)
    torch.testing.assert_close(occluded_2, dense, rtol=0, atol=1e-4)
    torch.testing.assert_close(clean_2, dense_clean, rtol=0, atol=1e-4)
    assert not occluded_2.requires_grad
