"""Bad images and bad annotations, built in tmp_path: every loader skips or fixes them with a reason or a
per-item warning, never a traceback; plus property-based round trips of the annotation parsers."""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from evalcam.data import DatasetError, Sample, SkippedImage, build_dataset
from evalcam.data.base import ImageReadError, read_image
from evalcam.data.imagenet import imagenet_wnids, read_bbox_xml, read_solution_csv
from evalcam.data.voc import VOC_CLASSES, parse_voc_xml


def jpeg(path: Path, width: int = 60, height: int = 40, colour=(90, 120, 150)) -> Path:
    Image.new("RGB", (width, height), colour).save(path, quality=90)
    return path


# --- images ------------------------------------------------------------------------------------------


def test_huge_image_is_decoded_shrunk_and_its_boxes_follow(tmp_path):
    """A 10k x 10k photo decodes at 5k x 5k (25 Mpx) instead of costing gigabytes per map."""
    folder = tmp_path / "val"
    folder.mkdir()
    Image.new("RGB", (10_000, 10_000), (120, 60, 30)).save(
        folder / "ILSVRC2012_val_00000001.JPEG", quality=70
    )
    xml = tmp_path / "bbox"
    xml.mkdir()
    (xml / "ILSVRC2012_val_00000001.xml").write_text(
        f"<annotation><object><name>{imagenet_wnids()[1]}</name><bndbox><xmin>0</xmin><ymin>2000</ymin>"
        "<xmax>9999</xmax><ymax>5999</ymax></bndbox></object></annotation>"
    )
    # No <size>: the stored size from the file header scales the boxes.
    sample = build_dataset("imagenet_val", root=folder, annotations=xml)[0]
    assert sample.orig_size == (10_000, 10_000) and sample.size == (5000, 5000)
    assert sample.boxes[1].tolist() == [[0.0, 1000.0, 4999.0, 2999.0]]
    assert abs(float(sample.image[0].float().mean()) - 120) < 3


def test_decompression_bombs_and_odd_modes(tmp_path, monkeypatch):
    sixteen = tmp_path / "gray16.png"
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)).save(sixteen)
    image, _ = read_image(sixteen)
    # 16-bit values scaled to 8 bits (PIL's own conversion would clip everything above 255 to white).
    assert int(image.max()) == round(40 * 60 * 27 / 257 - 27 / 257) and int(image[0, 0, 1]) == 0
    jpeg(tmp_path / "small.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 2400 px image is now a "bomb" (> 2x limit)
    with pytest.raises(ImageReadError, match="DecompressionBombError"):
        read_image(tmp_path / "small.jpg")


# --- VOC -----------------------------------------------------------------------------------------------


def voc_object(name: str, box: tuple | None, difficult: int = 0) -> str:
    bnd = ""
    if box is not None:
        bnd = (
            "<bndbox>"
            + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
            + "</bndbox>"
        )
    return f"<object><name>{name}</name><difficult>{difficult}</difficult>{bnd}</object>"


def voc_xml(objects: list[str], size: tuple[int, int] | None = (40, 60)) -> str:
    head = f"<size><width>{size[1]}</width><height>{size[0]}</height></size>" if size else ""
    return f"<annotation>{head}{''.join(objects)}</annotation>"


def build_voc(root: Path, files: dict[str, str]) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for image_id, text in files.items():
        jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(text)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(files) + "\n")
    return root


def test_voc_bad_annotations_are_fixed_or_skipped_item_by_item(tmp_path, caplog):
    dog, cat = VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat")
    root = build_voc(
        tmp_path,
        {
            "good": voc_xml([voc_object("dog", (1, 1, 60, 40))]),
            "outside": voc_xml([voc_object("dog", (-5, 10, 90, 30))]),  # clipped
            "inverted": voc_xml([voc_object("dog", (30, 10, 20, 30)), voc_object("cat", (1, 1, 10, 10))]),
            "garbage": voc_xml([voc_object("dog", (1, "abc", 10, 10))]),
            "unknown": voc_xml([voc_object("dragon", (1, 1, 9, 9)), voc_object("cat", (2, 2, 9, 9))]),
            "only_unknown": voc_xml([voc_object("dragon", (1, 1, 9, 9))]),
            "no_box": voc_xml([voc_object("cat", None)]),
            "malformed": "<annotation><object><name>dog",
        },
    )
    dataset = build_dataset("voc2007", root=root)
    with caplog.at_level(logging.WARNING):
        items = {dataset.ids[i]: dataset[i] for i in range(len(dataset))}
    assert isinstance(items["good"], Sample) and items["good"].warnings == []
    assert items["good"].boxes[dog].tolist() == [[0.0, 0.0, 59.0, 39.0]]
    outside = items["outside"]
    assert outside.boxes[dog].tolist() == [[0.0, 9.0, 59.0, 29.0]] and "clipped" in outside.warnings[0]
    inverted = items["inverted"]
    assert inverted.labels == [cat, dog] and dog not in inverted.boxes  # class kept, box dropped
    assert len(inverted.warnings) == 1 and "inverted" in inverted.warnings[0]
    assert items["garbage"].labels == [dog] and items["garbage"].boxes == {}
    assert "non-numeric" in items["garbage"].warnings[0]
    assert items["unknown"].labels == [cat] and "dragon" in items["unknown"].warnings[0]
    assert items["no_box"].labels == [cat] and "no <bndbox>" in items["no_box"].warnings[0]
    for image_id, why in (("only_unknown", "dragon"), ("malformed", "ParseError")):
        assert isinstance(items[image_id], SkippedImage) and why in items[image_id].reason
    # One log line per problem, each naming its file.
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("annotation: ")]
    assert sum("outside.xml" in m for m in logged) == 1 and sum("unknown.xml" in m for m in logged) == 1
    assert all("\n" not in m for m in logged)


@st.composite
def voc_objects(draw):
    name = draw(st.one_of(st.sampled_from(VOC_CLASSES), st.sampled_from(["dragon", "Dog", ""])))
    corner = st.one_of(
        st.integers(-3, 600), st.floats(0, 600, allow_nan=False).map(lambda v: round(v, 1)), st.just("x")
    )
    box = draw(st.one_of(st.none(), st.tuples(corner, corner, corner, corner)))
    return name, box, draw(st.integers(0, 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(voc_objects(), min_size=1, max_size=5))
def test_voc_parser_round_trip(tmp_path, objects):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml([voc_object(*o) for o in objects]))
    known = [o for o in objects if o[0] in VOC_CLASSES]
    if not known:
        with pytest.raises(ValueError, match="VOC class"):
            parse_voc_xml(path)
        return
    parsed = parse_voc_xml(path)
    assert parsed.size == (40, 60)
    assert parsed.labels == {VOC_CLASSES.index(o[0]) for o in known}
    want = [
        (VOC_CLASSES.index(n), [float(v) - 1 if not isinstance(v, str) else math.nan for v in b], bool(d))
        for n, b, d in known
        if b is not None
    ]
    got = parsed.objects
    assert [(c, d) for c, _, d in got] == [(c, d) for c, _, d in want]
    for (_, a, _), (_, b, _) in zip(got, want, strict=True):
        assert np.allclose(a, b, equal_nan=True)
    # One note per dropped object (unknown class) and per object without a box.
    assert len(parsed.notes) == len(objects) - len(known) + sum(b is None for _, b, _ in known)


# --- COCO ----------------------------------------------------------------------------------------------


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


# --- ImageNet ------------------------------------------------------------------------------------------


def test_imagenet_bad_annotations(tmp_path, caplog):
    folder = tmp_path / "val"
    folder.mkdir()
    xml = tmp_path / "bbox"
    xml.mkdir()
    wnid = imagenet_wnids()[7]
    texts = {
        1: f"<annotation><object><name>{wnid}</name><bndbox><xmin>-4</xmin><ymin>0</ymin><xmax>30</xmax>"
        "<ymax>20</ymax></bndbox></object><object><name>n99999999</name></object>"
        "<size><width>60</width><height>40</height></size></annotation>",
        2: "<annotation><object><name>n99999999</name></object></annotation>",
        3: f"<annotation><object><name>{wnid}</name><bndbox><xmin>a</xmin></bndbox></object></annotation>",
    }
    for number, text in texts.items():
        jpeg(folder / f"ILSVRC2012_val_{number:08d}.JPEG")
        (xml / f"ILSVRC2012_val_{number:08d}.xml").write_text(text)
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset("imagenet_val", root=folder, annotations=xml)
        one, two, three = (dataset[i] for i in range(3))
    assert one.labels == [7] and one.boxes[7].tolist() == [[0.0, 0.0, 30.0, 20.0]]
    assert len(one.warnings) == 2 and "n99999999" in one.warnings[0] and "clipped" in one.warnings[1]
    assert isinstance(two, SkippedImage) and "synset" in two.reason
    assert three.labels == [7] and three.boxes == {} and "non-numeric" in three.warnings[0]
    assert any("1 annotation file(s) unreadable" in r.getMessage() for r in caplog.records)


def test_imagenet_metadata_errors_name_file_and_line(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "class_labels.txt").write_text("val/a.JPEG,3\nval/b.JPEG,x\n")
    (meta / "image_sizes.txt").write_text("val/a.JPEG,10,10\n")
    (meta / "localization.txt").write_text("val/a.JPEG,1,1,5,5\n")
    folder = tmp_path / "val"
    folder.mkdir()
    jpeg(folder / "a.JPEG")
    with pytest.raises(DatasetError, match=r"class_labels.txt line 2") as err:
        build_dataset("imagenet_val", root=folder, annotations=meta)
    assert "\n" not in str(err.value)


synset = st.sampled_from([*imagenet_wnids()[:50], "n00000000", "dog"])
box = st.tuples(*[st.integers(0, 500)] * 4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(synset, st.one_of(st.none(), box)), max_size=4), min_size=1, max_size=4))
def test_solution_csv_round_trip(tmp_path, rows):
    """Kaggle rows of ``synset [x0 y0 x1 y1]`` groups: known synsets give labels and boxes, unknown ones a
    note each, and no row is lost."""
    lines = ["ImageId,PredictionString"]
    for i, groups in enumerate(rows):
        tokens = [t for s, b in groups for t in (s, *(str(v) for v in (b or ())))]
        lines.append(f"ILSVRC2012_val_{i:08d},{' '.join(tokens)}")
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("\n".join(lines) + "\n")
    records = read_solution_csv(path)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    assert sorted(records) == [f"ILSVRC2012_val_{i:08d}" for i in range(len(rows))]
    for i, groups in enumerate(rows):
        record = records[f"ILSVRC2012_val_{i:08d}"]
        assert record.labels == {index[s] for s, _ in groups if s in index}
        assert record.objects == [(index[s], [float(v) for v in b]) for s, b in groups if s in index and b]
        assert len(record.notes) == sum(s not in index for s, _ in groups)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(synset, st.one_of(st.none(), box)), min_size=1, max_size=4))
def test_bbox_xml_round_trip(tmp_path, objects):
    root = ET.Element("annotation")
    for name, coords in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        if coords is not None:
            bnd = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), coords, strict=True):
                ET.SubElement(bnd, key).text = str(value)
    path = tmp_path / "x.xml"
    ET.ElementTree(root).write(path)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    if not any(n in index for n, _ in objects):
        with pytest.raises(ValueError, match="synset"):
            read_bbox_xml(path)
        return
    record = read_bbox_xml(path)
    assert record.labels == {index[n] for n, _ in objects if n in index}
    assert record.objects == [(index[n], [float(v) for v in b]) for n, b in objects if n in index and b]
    assert len(record.notes) == sum(n not in index for n, _ in objects)
