"""Cumulative perturbation games scored by incremental re-inference (evalcam.metrics.local_steps) must give
the numbers full forwards give, and must actually take the incremental path for small replaced regions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from torch import nn

from evalcam.metrics import build_metrics, local_steps
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.local_steps import mask_boxes, stepped_scores


class DeepToy(nn.Module):
    """Padded, strided and residual convolutions: receptive fields that stay local for a while."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8).eval()
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = h + torch.relu(self.block(h))
        return self.fc(torch.relu(self.down(h)).mean((2, 3)))


class FunctionalToy(DeepToy):
    """DeepToy with its convolutions called as functions (like EfficientNet-Lite's same-padding convolutions):
    its fx trace has no Conv2d modules, so no layout conversion copies the input before a chain starts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def conv(layer: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
            return F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding)

        h = torch.relu(self.bn(conv(self.stem, x)))
        h = h + torch.relu(conv(self.block, h))
        return self.fc(torch.relu(conv(self.down, h)).mean((2, 3)))


def _batch(size: int = 48, images: int = 2, toy: type[DeepToy] = DeepToy) -> EvalBatch:
    model = toy().eval()
    g = torch.Generator().manual_seed(11)
    inputs = torch.randn(images, 3, size, size, generator=g)
    # one smooth bump per image: the most salient regions form a compact blob
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    maps = torch.stack([torch.exp(-((yy - 1) ** 2 + (xx - 4 + i) ** 2) / 2) for i in range(images)])
    with torch.no_grad():
        classes = model(inputs).argmax(1)
    return make_batch(model, inputs, classes, maps[:, None], id_prefix="")


def test_mask_boxes_are_tight_and_empty_masks_get_an_empty_box():
    masks = torch.zeros(3, 1, 5, 7, dtype=torch.bool)
    masks[0, 0, 1, 2] = True
    masks[1, 0, 0:4, 3:7] = True
    masks[1, 0, 4, 0] = True
    assert mask_boxes(masks).tolist() == [[1, 2, 2, 3], [0, 5, 0, 7], [0, 0, 0, 0]]


def test_stepped_scores_equal_full_forwards_and_take_the_incremental_path():
    batch = _batch()
    model, inputs = batch.bundle.model, batch.inputs
    classes = batch.pred_classes[:, 0]
    order = torch.arange(48 * 48).view(1, 1, 48, 48)  # raster order: copy k replaces the first 96 k pixels

    def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return order.expand(len(image), -1, -1, -1) < (96 * k).view(-1, 1, 1, 1)

    def values_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return -inputs[image] + k.view(-1, 1, 1, 1)  # values that differ per image and per copy

    dense = stepped_scores(model, inputs, classes, 12, mask_of, values_of, "logit", 5, incremental=False)
    assert local_steps.LAST.dense == 24 and local_steps.LAST.local == 0
    ours = stepped_scores(model, inputs, classes, 12, mask_of, values_of, "logit", 5, incremental=True)
    counts = local_steps.LAST
    # copy 0 replaces nothing; copies 1..3 touch rows 0..5 (6 x 48 = 12.5 % of the image); 4.. run dense
    assert (counts.unchanged, counts.local, counts.dense) == (2, 6, 16)
    assert counts.clean_passes == 2 and counts.groups == [3, 3]
    assert torch.allclose(ours, dense, atol=1e-5, rtol=0), (ours - dense).abs().max()
    with torch.no_grad():
        clean = model(inputs).gather(1, classes[:, None]).double()[:, 0]
    assert torch.allclose(ours[:, 0], clean, atol=1e-6)


def test_nested_steps_chain_from_the_previous_copy_and_skip_repeated_inputs():
    batch = _batch()
    model, inputs = batch.bundle.model, batch.inputs
    classes = batch.pred_classes[:, 0]
    order = torch.arange(48 * 48).view(1, 1, 48, 48)
    # copy k replaces the first 96 * bound[k] pixels (2 rows per step); copies 3 and 7 repeat the one before
    bound = torch.tensor([1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 10])
    fill = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))

    def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return order.expand(len(image), -1, -1, -1) < (96 * bound[k]).view(-1, 1, 1, 1)

    def values_of(image: torch.Tensor, _k: torch.Tensor) -> torch.Tensor:
        return fill[image]  # fixed per image, as the nested path requires

    args = (model, inputs, classes, 12, mask_of, values_of, "logit", 5)
    dense = stepped_scores(*args, incremental=False)
    ours = stepped_scores(*args, incremental=True, nested=True)
    counts = local_steps.LAST
    # every step adds a 2-row band (4 % of the image) to the copy before it: one clean pass per image,
    # the rest chained; the repeated copies are not run at all
    assert (counts.unchanged, counts.local, counts.dense, counts.clean_passes) == (4, 20, 0, 2)
    assert torch.allclose(ours, dense, atol=1e-5, rtol=0), (ours - dense).abs().max()
    assert torch.equal(ours[:, 3], ours[:, 2]) and torch.equal(ours[:, 7], ours[:, 6])
    without = stepped_scores(*args, incremental=False, nested=True)  # the GPU path: repeats still skipped
    assert (local_steps.LAST.unchanged, local_steps.LAST.dense) == (4, 20)
    assert torch.allclose(without, dense, atol=1e-6, rtol=0)


def test_images_whose_steps_align_step_in_one_call_and_the_others_chain_alone():
    """The same step of several images runs as one incremental call (one cached row and one box per image)
    when their games are small, empty and full at the same steps; an image with another pattern chains on
    its own. Either way the scores are those of full forwards."""
    batch = _batch(images=3)
    model, inputs = batch.bundle.model, batch.inputs
    classes = batch.pred_classes[:, 0]
    rows_first = torch.arange(48 * 48).view(48, 48)
    order = torch.stack([rows_first, rows_first.flip(0), rows_first.t()])[:, None]  # bands at other places
    bound = torch.tensor(
        [[1, 2, 3, 3, 4, 5], [1, 2, 3, 3, 4, 5], [1, 1, 2, 3, 4, 5]]
    )  # image 2 repeats earlier
    fill = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(6))

    def mask_of(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return order[image] < (96 * bound[image, k]).view(-1, 1, 1, 1)

    def values_of(image: torch.Tensor, _k: torch.Tensor) -> torch.Tensor:
        return fill[image]

    args = (model, inputs, classes, 6, mask_of, values_of, "logit", 8)
    dense = stepped_scores(*args, incremental=False)
    ours = stepped_scores(*args, incremental=True, nested=True)
    counts = local_steps.LAST
    assert torch.allclose(ours, dense, atol=1e-5, rtol=0), (ours - dense).abs().max()
    # images 0 and 1 (bands at the top and at the bottom) step together: 5 calls of 2; image 2 alone: 5 of 1
    assert sorted(counts.groups) == [1] * 5 + [2] * 5
    assert (counts.local, counts.unchanged, counts.dense, counts.clean_passes) == (15, 3, 0, 3)
    alone = local_steps.CHAIN_ROWS
    try:
        local_steps.CHAIN_ROWS = 1
        assert torch.allclose(stepped_scores(*args, incremental=True, nested=True), ours, atol=1e-5, rtol=0)
        assert local_steps.LAST.groups == [1] * 15
    finally:
        local_steps.CHAIN_ROWS = alone


def test_a_chain_never_writes_into_the_images_it_starts_from():
    """Regression: a chain's cache held a view of the batch and each step wrote its pixels into it, so RISE
    deletion left the deleted pixels in the images and insertion (run next on the same batch) gave 0.369
    where the dense game gives 0.595 (Lite0, whose trace has no Conv2d modules to force a copy)."""
    from evalcam.metrics.deletion_insertion import Deletion, Insertion

    records = {}
    for incremental in (False, True):
        batch = _batch(toy=FunctionalToy)
        before = batch.inputs.clone()
        pair = [
            Deletion(step=24, chunk_size=5, incremental=incremental),
            Insertion(step=24, incremental=incremental),
        ]
        records[incremental] = [r for metric in pair for r in metric.update(batch)]
        assert torch.equal(batch.inputs, before)
    assert local_steps.LAST.local > 0 and local_steps.LAST.clean_passes > 0
    for got, want in zip(records[True], records[False], strict=True):
        assert all(got[k] == pytest.approx(want[k], abs=1e-6) for k in want)


def test_advance_refuses_a_cache_it_does_not_own():
    from evalcam.models.incremental import incremental_model

    executor = incremental_model(FunctionalToy().eval())
    inputs = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match="chain_pass"):
        executor.advance(executor.clean_pass(inputs), (0, 2, 0, 2), torch.zeros(1, 3, 2, 2))
    cache = executor.chain_pass(inputs)
    before = inputs.clone()
    executor.advance(cache, (0, 2, 0, 2), torch.zeros(1, 3, 2, 2))
    assert torch.equal(inputs, before) and float(executor.input_of(cache)[..., :2, :2].abs().max()) == 0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("region_perturbation", {"patch_size": 8, "regions": 20, "baseline": "uniform"}),
        ("pixel_flipping", {"steps": 96, "baseline": "blur"}),
    ],
)
def test_cumulative_metrics_give_the_same_records_with_and_without_incremental(name, params):
    batch = _batch()
    (dense,) = build_metrics({name: {**params, "incremental": False, "chunk_size": 7}}, "cpu")
    (ours,) = build_metrics({name: {**params, "incremental": True, "chunk_size": 7}}, "cpu")
    expected = dense.update(batch)
    records = ours.update(batch)
    assert local_steps.LAST.local > 0  # the first steps of a compact blob are local
    for got, want in zip(records, expected, strict=True):
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k], abs=1e-6) for k in want)


def test_a_bad_incremental_setting_is_refused_at_construction():
    with pytest.raises(ValueError, match="incremental must be true, false or 'auto'"):
        build_metrics({"region_perturbation": {"incremental": "sometimes"}}, "cpu")


# --- RISE deletion / insertion -----------------------------------------------------------------------------


def _rise_curve(model: nn.Module, batch: EvalBatch, mode: str, step: int, substrate: torch.Tensor):
    """The game as one full forward per point (the protocol of RISE's CausalMetric, all n + 1 points)."""
    from evalcam.maps import upsample
    from evalcam.metrics.deletion_insertion import saliency_rank

    inputs = batch.inputs
    size = tuple(inputs.shape[-2:])
    rank, _ = saliency_rank(upsample(batch.pred_maps[:, 0], size))
    rank = rank.view(-1, 1, *size)
    start, finish = (inputs, substrate) if mode == "deletion" else (substrate, inputs)
    points = -(-size[0] * size[1] // step) + 1
    with torch.no_grad():
        curve = [
            model(torch.where(rank < k * step, finish, start)).softmax(-1).gather(1, batch.pred_classes)[:, 0]
            for k in range(points)
        ]
    return torch.stack(curve, 1).double()


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_deletion_and_insertion_equal_a_full_forward_per_point_with_incremental_steps(mode):
    from evalcam.metrics.deletion_insertion import Deletion, Insertion, blur

    batch = _batch()
    metric = (Deletion if mode == "deletion" else Insertion)(step=24, chunk_size=5)
    curve, _ = metric.curves(batch)
    assert local_steps.LAST.local > 0
    substrate = torch.zeros_like(batch.inputs) if mode == "deletion" else blur(batch.inputs)
    expected = _rise_curve(batch.bundle.model, batch, mode, 24, substrate)
    assert curve.shape == expected.shape == (2, 97)
    assert torch.allclose(curve, expected, atol=1e-6, rtol=0), (curve - expected).abs().max()


def test_deletion_and_insertion_share_the_clean_and_fully_replaced_points():
    from evalcam.metrics.deletion_insertion import Deletion, Insertion

    batch = _batch(images=3)
    counted = []
    batch.bundle.model.register_forward_pre_hook(lambda _m, args: counted.append(len(args[0])))
    steps = 48 * 48 // 96  # n = 24 steps, n + 1 = 25 points
    dense = {"incremental": False}  # every intermediate copy a full forward: the counts are exact
    Deletion(step=96, **dense).update(batch)
    assert sum(counted) == 3 * (steps - 1) + 1  # clean from the batch, the mean-colour image once
    counted.clear()
    Insertion(step=96, **dense).update(batch)
    assert sum(counted) == 3 * (steps - 1) + 3  # the blurred images, once each
    counted.clear()
    Deletion(step=96, substrate="blur", **dense).update(batch)
    assert sum(counted) == 3 * (steps - 1)  # its last point is insertion's first: already scored
    counted.clear()
    part = batch.rows(0, 2)  # a sliced batch shares ``extra`` but not the cached tensors
    records = Insertion(step=96, **dense).update(part)
    assert sum(counted) == 2 * (steps - 1) + 2
    alone = Insertion(step=96).update(_batch(images=3).rows(0, 2))
    assert [r["insertion.auc"] for r in records] == pytest.approx(
        [r["insertion.auc"] for r in alone], abs=1e-9
    )


def test_lite0_region_perturbation_is_exact_with_incremental_steps():
    from evalcam.bench.faithfulness_metrics import bench_batch

    batch = bench_batch(images=2)
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    batch.pred_maps = torch.exp(-((yy - 2) ** 2 + (xx - 4) ** 2) / 1.5).expand(2, 1, 7, 7).contiguous()
    params = {"patch_size": 16, "regions": 10, "baseline": "uniform", "chunk_size": 8}
    (dense,) = build_metrics({"region_perturbation": {**params, "incremental": False}}, "cpu")
    (ours,) = build_metrics({"region_perturbation": {**params, "incremental": True}}, "cpu")
    want, _ = dense.curves(batch)
    got, _ = ours.curves(batch)
    assert local_steps.LAST.local >= 10 and local_steps.LAST.clean_passes == 2
    assert float((got - want).abs().max()) <= 1e-6
