"""Pointing game (TorchRay protocol) and energy pointing on hand-built maps, plus the EBP difficult subset
checked against TorchRay's published table on real VOC07 annotations."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
import torch
from conftest import map_batch, shared_subdir
from hypothesis import given, settings
from hypothesis import strategies as st

from evalcam.data.types import Sample
from evalcam.metrics.pointing import EnergyPointingGame, PointingGame
from evalcam.metrics.regions import class_mask, ebp_difficult_classes, pointing_hit

SIZE = (100, 100)


def _sample(image_id, boxes, difficult=None, masks=None, size=SIZE):
    """``boxes``: {class: [[x0, y0, x1, y1], ...]} (inclusive)."""
    difficult = difficult or {}
    return Sample(
        image=torch.zeros(3, *size, dtype=torch.uint8),
        image_id=image_id,
        labels=sorted(boxes) if boxes else sorted(masks),
        boxes={c: torch.tensor(b, dtype=torch.float32) for c, b in boxes.items()},
        difficult={c: torch.tensor(difficult.get(c, [False] * len(b))) for c, b in boxes.items()},
        masks=masks,
        orig_size=size,
    )


def _peak(x, y, size=SIZE):
    cam = torch.zeros(size)
    cam[y, x] = 1.0
    return cam


def _batch(samples, classes, maps):
    """``classes``: per image its GT classes (padded with -1), ``maps`` [B, L, h, w] in that order."""
    return map_batch(samples, gt_classes=classes, gt_maps=maps)


def _torchray_hit(point, mask, tolerance=15):
    """TorchRay's PointingGame.evaluate, written out: acceptance disc (v + u) < tolerance**2."""
    v = (torch.arange(mask.shape[0], dtype=torch.float32) - point[1]) ** 2
    u = (torch.arange(mask.shape[1], dtype=torch.float32) - point[0]) ** 2
    accept = (v[:, None] + u[None, :]) < tolerance**2
    return bool((mask & accept).any())


@pytest.mark.parametrize(
    ("point", "hit"),
    [
        ((26, 50), True),  # 14 px left of the box
        ((25, 50), False),  # exactly 15 px: TorchRay's test is strict
        ((24, 50), False),  # 16 px
        ((31, 31), True),  # diagonal 9, 9: d^2 = 162
        ((28, 31), False),  # diagonal 12, 9: d = 15 exactly
        ((50, 50), True),  # inside
        ((73, 50), True),  # 14 px right of the inclusive edge x1 = 59
        ((74, 50), False),  # 15 px right of it
    ],
)
def test_tolerance_is_strictly_below_15_px(point, hit):
    sample = _sample("s", {3: [[40, 40, 59, 59]]})
    assert pointing_hit(point, sample, 3) is hit
    assert _torchray_hit(point, class_mask(sample, 3)) is hit


def test_mask_regions_use_the_mask_not_the_boxes():
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[50, 50] = True
    sample = _sample("m", {3: [[0, 0, 99, 99]]}, masks={3: mask})
    assert pointing_hit((36, 50), sample, 3)
    assert not pointing_hit((35, 50), sample, 3)
    assert not pointing_hit((5, 5), sample, 3)  # inside the box, far from the mask


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 79),
    st.integers(0, 79),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 99),
    st.integers(0, 99),
)
def test_box_shortcut_equals_torchray_disc_test(x0, y0, w, h, px, py):
    sample = _sample("r", {1: [[x0, y0, x0 + w, y0 + h]]})
    assert pointing_hit((px, py), sample, 1) == _torchray_hit((px, py), class_mask(sample, 1))


def test_all_difficult_classes_are_skipped_and_difficult_boxes_still_count():
    # class 1: only a difficult box -> skipped; class 2: a difficult and a normal box -> evaluated,
    # and the point in its difficult box is a hit (TorchRay's mask includes every box of the class).
    sample = _sample(
        "d",
        {1: [[0, 0, 9, 9]], 2: [[80, 80, 99, 99], [0, 40, 9, 49]]},
        difficult={1: [True], 2: [True, False]},
    )
    maps = torch.stack([_peak(5, 5), _peak(90, 90)])[None]
    metric = PointingGame(num_classes=10)
    record = metric.update(_batch([sample], [[1, 2]], maps))[0]
    out = metric.compute()
    assert record["pointing.hit"] == [-1, 1]
    assert out["skipped"] == 1.0
    assert out["evaluated"] == 1.0
    assert out["accuracy"] == 1.0


def test_a_masked_class_is_evaluated_even_if_all_its_boxes_are_difficult():
    # COCO: crowd-only classes come as difficult boxes, but TorchRay evaluates COCO on masks, never skipping
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[10:20, 10:20] = True
    sample = _sample("crowd", {4: [[10, 10, 19, 19]]}, difficult={4: [True]}, masks={4: mask})
    metric = PointingGame(num_classes=5)
    assert metric.update(_batch([sample], [[4]], _peak(15, 15)[None, None]))[0]["pointing.hit"] == [1]
    assert metric.compute()["skipped"] == 0.0


def test_accuracy_is_the_mean_of_per_class_accuracies():
    box = [[40, 40, 59, 59]]
    samples = [_sample("a", {1: box}), _sample("b", {1: box}), _sample("c", {2: box})]
    maps = torch.stack([_peak(50, 50), _peak(0, 0), _peak(45, 45)])[:, None]
    metric = PointingGame(num_classes=5)
    records = metric.update(_batch(samples, [[1], [1], [2]], maps))
    out = metric.compute()
    assert [r["pointing.hit"] for r in records] == [[1], [0], [1]]
    assert records[0]["pointing.points"] == [[50, 50]]
    assert out["accuracy"] == pytest.approx((0.5 + 1.0) / 2)  # class 1: 1/2, class 2: 1/1
    assert out["overall_accuracy"] == pytest.approx(2 / 3)
    assert out["classes_evaluated"] == 2.0


def test_maps_are_upsampled_to_the_image_before_the_argmax():
    # A 4x4 map whose hottest cell is the bottom-right one points into the bottom-right quarter.
    cam = torch.zeros(4, 4)
    cam[3, 3] = 1.0
    sample = _sample("u", {1: [[75, 75, 99, 99]]})
    metric = PointingGame(num_classes=2)
    record = metric.update(_batch([sample], [[1]], cam[None, None]))[0]
    x, y = record["pointing.points"][0]
    assert x >= 75 and y >= 75
    assert record["pointing.hit"] == [1]


@pytest.mark.parametrize("bad", [torch.zeros(SIZE), torch.full(SIZE, float("nan")), torch.full(SIZE, 3.0)])
def test_degenerate_maps_miss_and_are_counted(bad):
    sample = _sample("z", {1: [[0, 0, 99, 99]]})  # the whole image: any real point would hit
    metric = PointingGame(num_classes=2)
    metric.update(_batch([sample], [[1]], bad[None, None]))
    out = metric.compute()
    assert out["accuracy"] == 0.0
    assert out["degenerate_maps"] == 1.0


def test_padding_columns_are_ignored():
    samples = [
        _sample("one", {1: [[40, 40, 59, 59]]}),
        _sample("two", {1: [[40, 40, 59, 59]], 2: [[0, 0, 9, 9]]}),
    ]
    maps = torch.stack(
        [torch.stack([_peak(50, 50), _peak(99, 99)]), torch.stack([_peak(50, 50), _peak(3, 3)])]
    )
    metric = PointingGame(num_classes=3)
    records = metric.update(_batch(samples, [[1, -1], [1, 2]], maps))
    assert records[0]["pointing.classes"] == [1]
    assert metric.compute()["evaluated"] == 3.0


def test_difficult_subset_rule_on_hand_built_images():
    big, small = [[0, 0, 99, 59]], [[0, 0, 9, 9]]
    # small object + another class -> difficult; the big one is not
    assert ebp_difficult_classes(_sample("a", {1: small, 2: big})) == {1}
    # small object alone -> not difficult (no distractor class)
    assert ebp_difficult_classes(_sample("b", {1: small})) == set()
    # the only other class is all-difficult: it is no distractor
    assert ebp_difficult_classes(_sample("c", {1: small, 2: big}, difficult={2: [True]})) == set()
    # exactly 1/4 of the image is not < 1/4
    assert ebp_difficult_classes(_sample("d", {1: [[0, 0, 49, 49]], 2: small})) == {2}


# TorchRay's torchray/benchmark/pointing_game_ebp_voc07_difficult.txt, rows of these VOC07 test images:
# classes flagged difficult (VOC class indices). The rows were picked to cover every branch of the rule:
# all-difficult classes (000059, 000085, 000136), difficult boxes counted in the area (000178, 000226,
# 000413) and the union (not the sum) of overlapping boxes (000014, 000510).
TORCHRAY_DIFFICULT = {
    "000001": {11},
    "000004": set(),
    "000014": {5, 6, 14},
    "000059": {19},
    "000085": set(),
    "000127": {2},
    "000136": set(),
    "000178": {4},
    "000226": {10, 14},
    "000413": set(),
    "000510": {8, 10},
}
VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def _voc_sample(root, image_id) -> Sample:
    tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    width, height = int(tree.find("size/width").text), int(tree.find("size/height").text)
    boxes: dict[int, list] = {}
    difficult: dict[int, list] = {}
    for obj in tree.findall("object"):
        cls = VOC_CLASSES.index(obj.find("name").text)
        b = obj.find("bndbox")
        # VOC XML is 1-based inclusive; evalcam boxes are 0-based inclusive.
        boxes.setdefault(cls, []).append(
            [float(b.find(k).text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
        )
        difficult.setdefault(cls, []).append(obj.find("difficult").text == "1")
    return _sample(image_id, boxes, difficult, size=(height, width))


def test_difficult_subset_reproduces_torchray_table_on_voc07():
    root = shared_subdir("voc2007/VOCdevkit/VOC2007")
    for image_id, flagged in TORCHRAY_DIFFICULT.items():
        assert ebp_difficult_classes(_voc_sample(root, image_id)) == flagged, image_id


def test_difficult_accuracy_counts_only_difficult_pairs():
    samples = [_sample("a", {1: [[0, 0, 9, 9]], 2: [[0, 0, 99, 59]]})]  # class 1 difficult, 2 not
    maps = torch.stack([_peak(50, 90), _peak(50, 30)])[None]  # class 1 misses, class 2 hits
    metric = PointingGame(num_classes=3)
    metric.update(_batch(samples, [[1, 2]], maps))
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["difficult_accuracy"] == 0.0
    assert out["evaluated_difficult"] == 1.0


def test_merged_halves_equal_one_accumulator():
    box = [[40, 40, 59, 59]]
    samples = [_sample(str(i), {i % 3: box}) for i in range(6)]
    maps = torch.stack([_peak(50, 50) if i % 2 else _peak(5, 90) for i in range(6)])[:, None]
    classes = [[i % 3] for i in range(6)]
    whole = PointingGame(num_classes=3)
    whole.update(_batch(samples, classes, maps))
    first, second = PointingGame(num_classes=3), PointingGame(num_classes=3)
    first.update(_batch(samples[:3], classes[:3], maps[:3]))
    second.update(_batch(samples[3:], classes[3:], maps[3:]))
    first.merge(second.state_dict())
    merged, single = first.compute(), whole.compute()
    assert merged.keys() == single.keys()
    assert all(merged[k] == single[k] or (math.isnan(merged[k]) and math.isnan(single[k])) for k in merged)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), whole.state_dict().values(), strict=True)
    )


def test_energy_is_the_share_of_positive_map_inside_the_boxes():
    sample = _sample("e", {1: [[0, 0, 9, 9]]})
    cam = torch.zeros(SIZE)
    cam[0:10, 0:10] = 1.0  # 100 units inside
    cam[50:60, 50:70] = 1.5  # 300 units outside
    cam[90:, 90:] = -7.0  # negative evidence is not energy
    metric = EnergyPointingGame()
    record = metric.update(_batch([sample], [[1]], cam[None, None]))[0]
    assert record["energy_pointing.energy"] == [pytest.approx(100 / 400)]
    assert metric.compute()["energy"] == pytest.approx(0.25)


def test_energy_of_degenerate_maps_is_zero_and_counted():
    samples = [_sample("a", {1: [[0, 0, 49, 99]]}), _sample("b", {1: [[0, 0, 49, 99]]})]
    good = torch.zeros(SIZE)
    good[:, :50] = 1.0
    maps = torch.stack([good, torch.zeros(SIZE)])[:, None]
    metric = EnergyPointingGame()
    metric.update(_batch(samples, [[1], [1]], maps))
    out = metric.compute()
    assert out["energy"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert out["degenerate_maps"] == 1.0


def test_energy_merged_halves_equal_one_accumulator():
    samples = [_sample(str(i), {1: [[0, 0, 9 + 10 * i, 49]]}) for i in range(4)]
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 1, 10, 10, generator=g)
    whole, first, second = EnergyPointingGame(), EnergyPointingGame(), EnergyPointingGame()
    whole.update(_batch(samples, [[1]] * 4, maps))
    first.update(_batch(samples[:2], [[1]] * 2, maps[:2]))
    second.update(_batch(samples[2:], [[1]] * 2, maps[2:]))
    first.merge(second)
    assert first.compute() == pytest.approx(whole.compute())
