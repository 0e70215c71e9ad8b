"""PASCAL VOC2007 loader on the shared subset, checked against the XML parsed independently here;
bad annotations built in tmp_path (fixed or skipped item by item) and property-based parser round trips."""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import jpeg, shared_subdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from evalcam.data import DatasetError, Sample, SkippedImage, build_dataset
from evalcam.data.voc import VOC_CLASSES, parse_voc_xml

VOC = "voc2007/VOCdevkit/VOC2007"


@pytest.fixture(scope="module")
def xml_truth() -> dict[str, dict]:
    """Every annotation file of the subset: size and objects, straight from ElementTree."""
    truth = {}
    for path in sorted((shared_subdir(VOC) / "Annotations").glob("*.xml")):
        root = ET.parse(path).getroot()
        corners = ("xmin", "ymin", "xmax", "ymax")
        objects = [
            (
                o.findtext("name"),
                [int(o.find("bndbox").findtext(k)) for k in corners],
                o.findtext("difficult") == "1",
            )
            for o in root.iter("object")
        ]
        size = (int(root.find("size").findtext("height")), int(root.find("size").findtext("width")))
        truth[path.stem] = {"size": size, "objects": objects}
    return truth


def split_ids(split: str) -> list[str]:
    return (shared_subdir(VOC) / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def test_split_sizes_and_object_counts(xml_truth):
    test = build_dataset("voc2007", root=shared_subdir("voc2007"))  # default split: test
    trainval = build_dataset("voc2007", root=shared_subdir("voc2007"), split="trainval")
    assert (len(test), len(trainval)) == (503, 497)
    assert test.ids == sorted(split_ids("test")) and trainval.ids == sorted(split_ids("trainval"))
    assert set(test.ids) | set(trainval.ids) == set(xml_truth)
    objects = [o for d in (test, trainval) for i in d.ids for o in d.annotations[i][1]]
    assert len(objects) == 3041 == sum(len(t["objects"]) for t in xml_truth.values())
    assert sum(o[2] for o in objects) == 617 == sum(o[2] for t in xml_truth.values() for o in t["objects"])
    assert test.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20


def test_samples_match_xml_shifted_to_zero_based(xml_truth):
    dataset = build_dataset("voc2007", root=shared_subdir("voc2007"), split="trainval")
    for index in range(0, len(dataset), 20):  # 25 images
        sample = dataset[index]
        assert isinstance(sample, Sample)
        truth = xml_truth[sample.image_id]
        assert sample.size == sample.orig_size == truth["size"]
        assert sample.labels == sorted({VOC_CLASSES.index(n) for n, _, _ in truth["objects"]})
        got = sorted(
            (VOC_CLASSES[c], [int(v) + 1 for v in box], bool(flag))
            for c in sample.labels
            for box, flag in zip(sample.boxes[c].tolist(), sample.difficult[c].tolist(), strict=True)
        )
        assert got == sorted(truth["objects"])
        for boxes in sample.boxes.values():
            height, width = sample.size
            assert float(boxes[:, 0::2].max()) <= width - 1 and float(boxes[:, 1::2].max()) <= height - 1
            assert float(boxes.min()) >= 0


def test_first_image_known_boxes():
    sample = build_dataset("voc2007", root=shared_subdir("voc2007"), split="test", limit=1)[0]
    # 000001.xml: dog 48,240,195,371 and person 8,12,352,498 (1-based).
    assert sample.image_id == "000001" and sample.labels == [
        VOC_CLASSES.index("dog"),
        VOC_CLASSES.index("person"),
    ]
    assert sample.boxes[11].tolist() == [[47.0, 239.0, 194.0, 370.0]]
    assert sample.boxes[14].tolist() == [[7.0, 11.0, 351.0, 497.0]]


def test_class_filter_and_seeded_subset(xml_truth):
    root = shared_subdir("voc2007")
    with_dog = sorted(i for i in split_ids("test") if any(o[0] == "dog" for o in xml_truth[i]["objects"]))
    assert with_dog
    for spec in ("dog", 11, ["Dog"], [11, "dog"]):
        assert build_dataset("voc2007", root=root, classes=spec).ids == with_dog
    pets = build_dataset("voc2007", root=root, classes=["cat", "dog"]).ids
    assert set(with_dog) < set(pets)
    a = build_dataset("voc2007", root=root, limit=10, subset_seed=0).ids
    assert a == build_dataset("voc2007", root=root, limit=10, subset_seed=0).ids and len(a) == 10
    assert a != sorted(split_ids("test"))[:10]
    with pytest.raises(DatasetError, match="unknown class"):
        build_dataset("voc2007", root=root, classes=["doge"])


def test_root_variants_and_errors(tmp_path):
    base = shared_subdir("voc2007")
    ids = build_dataset("voc2007", root=base, limit=5).ids
    assert build_dataset("voc2007", root=base / "VOCdevkit", limit=5).ids == ids
    assert build_dataset("voc2007", root=base / "VOCdevkit" / "VOC2007", limit=5).ids == ids
    cases = [
        ("voc2007", {"root": None}),
        ("voc2007", {"root": tmp_path}),
        ("voc2012", {"root": base}),
        ("voc2007", {"root": base, "split": "val"}),
        ("voc2007", {"root": base, "split": "minival"}),
    ]
    for name, kw in cases:
        with pytest.raises(DatasetError) as err:
            build_dataset(name, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match=r"JPEGImages"):
        build_dataset("voc2007", root=tmp_path)


def test_broken_annotation_is_reported_as_skipped(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    source = shared_subdir(VOC)
    for image_id in ("000001", "000002"):
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(
            (source / "JPEGImages" / f"{image_id}.jpg").read_bytes()
        )
    (voc / "Annotations" / "000001.xml").write_text((source / "Annotations" / "000001.xml").read_text())
    (voc / "Annotations" / "000002.xml").write_text("<annotation><object><name>dog")  # cut off
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    dataset = build_dataset("voc2007", root=tmp_path)
    assert isinstance(dataset[0], Sample)
    skipped = dataset[1]
    assert not isinstance(skipped, Sample) and skipped.image_id == "000002" and "annotation" in skipped.reason


def test_resized_copy_gets_rescaled_boxes(tmp_path):
    """A VOC folder whose JPEGs were shrunk after annotation: boxes follow the image."""

    voc = tmp_path / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    source = shared_subdir(VOC)
    with Image.open(source / "JPEGImages" / "000001.jpg") as img:  # 353x500
        img.resize((176, 250)).save(voc / "JPEGImages" / "000001.jpg")
    (voc / "Annotations" / "000001.xml").write_text((source / "Annotations" / "000001.xml").read_text())
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    sample = build_dataset("voc2007", root=voc)[0]
    assert sample.size == (250, 176) and sample.orig_size == (500, 353)
    expected = torch.tensor([[7.0, 11.0, 351.0, 497.0]]) * torch.tensor([176 / 353, 250 / 500] * 2)
    assert torch.allclose(sample.boxes[14], expected, atol=1.0)
    assert float(sample.boxes[14][0, 2]) <= 175 and float(sample.boxes[14][0, 3]) <= 249


def test_voc2012_layout_is_accepted(tmp_path):
    """Same loader for 2012 (default split val): a VOC2012 folder built from one real image."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    source = shared_subdir(VOC)
    (voc / "JPEGImages" / "2008_000001.jpg").write_bytes((source / "JPEGImages" / "000001.jpg").read_bytes())
    # VOC2012 files sometimes hold float coordinates.
    text = (source / "Annotations" / "000001.xml").read_text().replace("<xmin>48</xmin>", "<xmin>48.0</xmin>")
    (voc / "Annotations" / "2008_000001.xml").write_text(text)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    dataset = build_dataset("voc2012", root=Path(tmp_path))
    assert dataset.name == "voc2012" and dataset.ids == ["2008_000001"]
    assert dataset[0].boxes[11].tolist() == [[47.0, 239.0, 194.0, 370.0]]


# --- bad images and annotations built in tmp_path: fixed or skipped with a reason, never a traceback ---


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
