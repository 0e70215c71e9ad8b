"""COCO loader on the shared val2017 mini set and on a hand-built COCO file with known answers;
bad entries and files that are not instances JSON, built in tmp_path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import jpeg, shared_subdir
from PIL import Image

from evalcam.data import DatasetError, Sample, SkippedImage, build_dataset
from evalcam.data.coco import coco_box

MINI = "coco_val2017_mini"


@pytest.fixture(scope="module")
def instances() -> dict:
    return json.loads((shared_subdir(MINI) / "annotations" / "instances_val2017.json").read_text())


@pytest.fixture(scope="module")
def mini():
    return build_dataset("coco2017", root=shared_subdir(MINI))


def test_counts_categories_and_crowd(mini, instances):
    assert len(mini) == 79 == len({a["image_id"] for a in instances["annotations"]})
    cats = sorted(instances["categories"], key=lambda c: c["id"])
    assert len(cats) == 80 and mini.class_names == [c["name"] for c in cats]
    assert mini.class_names[0] == "person" and mini.class_names[79] == "toothbrush"
    lean = build_dataset("coco2017", root=shared_subdir(MINI), masks=False)
    boxes = difficult = 0
    per_image: dict[str, int] = {}
    for index in range(len(lean)):
        sample = lean[index]
        assert isinstance(sample, Sample) and sample.masks is None
        count = sum(len(b) for b in sample.boxes.values())
        per_image[sample.image_id] = count
        boxes += count
        difficult += sum(int(d.sum()) for d in sample.difficult.values())
    assert boxes == 624 == len(instances["annotations"])
    assert difficult == sum(a["iscrowd"] for a in instances["annotations"]) == 5
    by_file = {i["id"]: Path(i["file_name"]).stem for i in instances["images"]}
    expected: dict[str, int] = {}
    for ann in instances["annotations"]:
        expected[by_file[ann["image_id"]]] = expected.get(by_file[ann["image_id"]], 0) + 1
    assert per_image == expected


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
def test_masks_union_matches_coco_api_and_lies_in_boxes(mini, instances):
    from pycocotools.coco import COCO

    api = COCO(str(shared_subdir(MINI) / "annotations" / "instances_val2017.json"))
    index_of = {cid: i for i, cid in enumerate(sorted(api.getCatIds()))}
    for index in (0, 13, 40, 78):
        sample = mini[index]
        img_id = next(i["id"] for i in instances["images"] if Path(i["file_name"]).stem == sample.image_id)
        info = api.imgs[img_id]
        assert sample.size == (info["height"], info["width"]) == sample.orig_size
        reference: dict[int, np.ndarray] = {}
        for ann in api.loadAnns(api.getAnnIds(imgIds=img_id)):
            c = index_of[ann["category_id"]]
            reference[c] = reference.get(c, 0) | api.annToMask(ann).astype(bool)
        assert sorted(sample.masks) == sorted(reference)
        for c, mask in sample.masks.items():
            assert mask.dtype == torch.bool and mask.shape == sample.size
            assert np.array_equal(mask.numpy(), reference[c])
            # Every mask pixel lies inside one of the class's (inclusive) boxes.
            ys, xs = np.nonzero(reference[c])
            inside = np.zeros(len(xs), dtype=bool)
            for x0, y0, x1, y1 in sample.boxes[c].tolist():
                inside |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            assert inside.all()


def test_coco_box_convention():
    # The pixels touched by [x, x+w) x [y, y+h): floor of the start, ceil of the end minus one.
    assert coco_box([10.5, 20.2, 30.0, 15.7], 100, 100) == [10.0, 20.0, 40.0, 35.0]
    assert coco_box([0.0, 0.0, 640.0, 480.0], 480, 640) == [0.0, 0.0, 639.0, 479.0]
    assert coco_box([5.0, 5.0, 0.0, 0.0], 10, 10) == [5.0, 5.0, 5.0, 5.0]  # degenerate: one pixel
    assert coco_box([-2.0, 3.0, 200.0, 2.0], 50, 60) == [0.0, 3.0, 59.0, 4.0]  # clamped to the image


def _hand_built(tmp_path: Path) -> Path:
    """Three 40x60 JPEGs: a polygon object, a crowd RLE, and one image without annotations."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (60, 40), (90, 120, 150)).save(tmp_path / "val2014" / f"COCO_val2014_{name}.jpg")
    crowd = np.zeros((40, 60), dtype=np.uint8, order="F")
    crowd[5:15, 10:30] = 1
    # Uncompressed column-major RLE, as COCO stores crowd regions: run lengths starting with zeros.
    runs, value, length = [], 0, 0
    for v in crowd.flatten(order="F"):
        if v == value:
            length += 1
        else:
            runs.append(length)
            value, length = v, 1
    runs.append(length)
    images = [
        {"id": i, "file_name": f"COCO_val2014_{n}.jpg", "height": 40, "width": 60}
        for i, n in enumerate("abc", 1)
    ]
    polygon = {"bbox": [10.5, 20.0, 20.0, 15.0], "segmentation": [[10.5, 20, 30.5, 20, 30.5, 35, 10.5, 35]]}
    crowd_region = {"bbox": [10.0, 5.0, 20.0, 10.0], "segmentation": {"size": [40, 60], "counts": runs}}
    small = {"bbox": [40.0, 30.0, 2.0, 2.0], "segmentation": [[40, 30, 42, 30, 42, 32, 40, 32]]}
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 300.0, **polygon},
        {"id": 2, "image_id": 2, "category_id": 3, "iscrowd": 1, "area": 200.0, **crowd_region},
        {"id": 3, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 4.0, **small},
    ]
    categories = [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    data = {"images": images, "categories": categories, "annotations": annotations}
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return tmp_path


def test_hand_built_coco_known_answers(tmp_path):
    root = _hand_built(tmp_path)
    dataset = build_dataset("coco2014", root=root)
    assert dataset.ids == ["COCO_val2014_a", "COCO_val2014_b"]  # the empty image is left out
    assert dataset.class_names == ["car", "dog"]  # ids 3, 18 -> 0, 1
    a, b = dataset[0], dataset[1]
    assert a.labels == [1] and a.boxes[1].tolist() == [[10.0, 20.0, 30.0, 34.0]]
    assert not bool(a.difficult[1].any())
    # The polygon spans x in [10.5, 30.5], y in [20, 35]: pycocotools rasterises 20 x 15 pixels.
    assert int(a.masks[1].sum()) == 300
    assert b.labels == [0] and b.boxes[0].tolist() == [[10.0, 5.0, 29.0, 14.0], [40.0, 30.0, 41.0, 31.0]]
    assert b.difficult[0].tolist() == [True, False]  # crowd region -> difficult
    assert bool(b.masks[0][5:15, 10:30].all()) and int(b.masks[0].sum()) == 200 + 4
    full = build_dataset("coco2014", root=root, skip_empty=False)
    assert len(full) == 3 and full[2].labels == [] and full[2].boxes == {}
    assert build_dataset("coco2014", root=root, classes="dog").ids == ["COCO_val2014_a"]


def test_class_filter_on_mini(mini, instances):
    person = next(c["id"] for c in instances["categories"] if c["name"] == "person")
    by_file = {i["id"]: Path(i["file_name"]).stem for i in instances["images"]}
    with_person = sorted(
        {by_file[a["image_id"]] for a in instances["annotations"] if a["category_id"] == person}
    )
    assert build_dataset("coco2017", root=shared_subdir(MINI), classes=["person"]).ids == with_person
    assert build_dataset("coco2017", root=shared_subdir(MINI), classes=0, limit=3).ids == with_person[:3]


def test_layout_errors(tmp_path):
    for kw in ({"root": None}, {"root": tmp_path / "nope"}, {"root": tmp_path}):
        with pytest.raises(DatasetError) as err:
            build_dataset("coco2017", **kw)
        assert "\n" not in str(err.value) and "instances_val2017.json" in str(err.value)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val2017" / "x.jpg")
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed"):
        build_dataset("coco2017", root=tmp_path)


# --- bad images and annotations built in tmp_path: fixed or skipped with a reason, never a traceback ---


def test_coco_bad_entries_are_dropped_with_warnings(tmp_path, caplog):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    for name in ("a", "b", "c"):
        jpeg(tmp_path / "val2017" / f"{name}.jpg")
    images = [{"id": i, "file_name": f"{n}.jpg", "height": 40, "width": 60} for i, n in enumerate("abcd", 1)]
    images.append({"id": 9})  # no file_name
    good = {"segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]], "iscrowd": 0}
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [50.0, 30.0, 20.0, 20.0], **good},  # overflows
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5.0, 5.0, 0.0, 3.0], **good},  # zero area
        {"id": 3, "image_id": 1, "category_id": 77, "bbox": [1.0, 1.0, 3.0, 3.0]},  # unknown category
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": None, "segmentation": {"counts": 5}},
        {"id": 5, "image_id": 3, "category_id": 99, "bbox": [1.0, 1.0, 3.0, 3.0]},  # only unknown
        {"id": 6, "image_id": 4, "category_id": 1, "bbox": [1.0, 1.0, 3.0, 3.0]},  # image file missing
        {"id": 7, "image_id": 42, "category_id": 1, "bbox": [1.0, 1.0, 3.0, 3.0]},  # image not listed
    ]
    categories = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset("coco2017", root=tmp_path)
        assert dataset.ids == ["a", "b", "c", "d"] and dataset.has_masks
        items = [dataset[i] for i in range(4)]
    init = " | ".join(r.getMessage() for r in caplog.records)
    assert "1 image entries without id or file_name" in init and "1 annotations of image ids" in init
    assert "1 of 4 images listed" in init and "missing" in init
    a, b, c, d = items
    assert a.labels == [0, 1] and a.boxes[0].tolist() == [[50.0, 30.0, 59.0, 39.0]] and 1 not in a.boxes
    assert int(a.masks[1].sum()) > 0  # the zero-area box loses its box, not its mask
    assert sum("clipped" in w for w in a.warnings) == 1 and sum("zero area" in w for w in a.warnings) == 1
    assert sum("unknown category_id 77" in w for w in a.warnings) == 1
    assert b.labels == [0] and b.boxes == {} and any("segmentation unreadable" in w for w in b.warnings)
    assert isinstance(c, SkippedImage) and "known category" in c.reason
    assert isinstance(d, SkippedImage) and "missing" in d.reason


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", '{"images": [], "annotations": []}', '{"images": 3, "annotations": [], "categories": []}'],
)
def test_coco_file_that_is_not_instances_json_is_one_line_error(tmp_path, text):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    jpeg(tmp_path / "val2017" / "a.jpg")
    (tmp_path / "annotations" / "instances_val2017.json").write_text(text)
    with pytest.raises(DatasetError, match="malformed annotation file") as err:
        build_dataset("coco2017", root=tmp_path)
    assert "\n" not in str(err.value)
