"""ILSVRC2012 val loader on the shared 227x227 subset, against the metadata parsed independently
here; bad annotations and metadata built in tmp_path and property-based round trips of the parsers."""

from __future__ import annotations

import csv
import importlib.util
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from conftest import ROOT, jpeg, shared_subdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalcam.data import DatasetError, Sample, SkippedImage, build_dataset
from evalcam.data.imagenet import ImageNetVal, imagenet_wnids, read_bbox_xml, read_solution_csv
from evalcam.data.imagenet_classes import imagenet_categories

VAL = "imagenet_val_227/ILSVRC2012_VAL_SET"
WSOL = "imagenet_meta/wsolevaluation_ILSVRC_test"
SOLUTION = "imagenet_meta/LOC_val_solution.csv"


def stem(name: str) -> str:
    return Path(name.strip()).stem


@pytest.fixture(scope="module")
def meta():
    """wsolevaluation metadata parsed with plain csv, independently of evalcam."""
    folder = shared_subdir(WSOL)
    labels = {stem(r[0]): int(r[1]) for r in csv.reader((folder / "class_labels.txt").open())}
    sizes = {stem(r[0]): (int(r[1]), int(r[2])) for r in csv.reader((folder / "image_sizes.txt").open())}
    boxes: dict[str, list[list[int]]] = {}
    for row in csv.reader((folder / "localization.txt").open()):
        boxes.setdefault(stem(row[0]), []).append([int(v) for v in row[1:]])
    return labels, sizes, boxes


@pytest.fixture(scope="module")
def listed() -> dict[str, int]:
    """dataset.txt of the 227 subset: id -> label."""
    text = (shared_subdir(VAL) / "dataset.txt").read_text()
    return {stem(line.split(",")[0]): int(line.split(",")[1]) for line in text.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def wsol_set() -> ImageNetVal:
    return build_dataset("imagenet_val", root=shared_subdir(VAL), annotations=shared_subdir(WSOL))


def test_wnids_file_is_sorted_and_matches_shared_metadata(meta):
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) == len(imagenet_categories())
    assert wnids == sorted(wnids)
    assert all(w.startswith("n") and len(w) == 9 for w in wnids)
    labels = meta[0]
    with shared_subdir(SOLUTION).open() as handle:
        solution = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(handle)}
    assert len(labels) == len(solution) == 50_000
    # Every one of the 50k images: the integer label names the same synset as Kaggle's file.
    assert all(wnids[labels[key]] == solution[key] for key in labels)
    # A third source: the subset's own synset_words.txt (Caffe order).
    words = (shared_subdir(VAL) / "synset_words.txt").read_text().splitlines()
    assert [line.split()[0] for line in words] == wnids


def test_make_wnids_script_regenerates_the_file(tmp_path):
    spec = importlib.util.spec_from_file_location("make_wnids", ROOT / "scripts" / "make_imagenet_wnids.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "wnids.txt"
    labels_file, solution = shared_subdir(WSOL) / "class_labels.txt", shared_subdir(SOLUTION)
    module.main(["--class-labels", str(labels_file), "--solution", str(solution), "--output", str(out)])
    assert out.read_text().split() == imagenet_wnids()
    # A swapped pair of labels must be caught, not silently written.
    with pytest.raises(ValueError, match="several synsets"):
        module.derive_wnids({"a": 0, "b": 1, "c": 0}, {"a": {"n2"}, "b": {"n1"}, "c": {"n3"}})


def test_wsolevaluation_subset_counts_labels_and_boxes(wsol_set, meta, listed):
    labels, sizes, boxes = meta
    assert len(wsol_set) == 1300 and wsol_set.ids == sorted(listed)
    assert len({c for i in wsol_set.ids for c in wsol_set.labels_for(i)}) == 725
    assert all(wsol_set.labels_for(i) == [listed[i]] == [labels[i]] for i in wsol_set.ids)
    for index in range(0, 1300, 65):  # 20 images spread over the subset
        sample = wsol_set[index]
        assert isinstance(sample, Sample)
        key = sample.image_id
        width, height = sizes[key]
        assert sample.size == (227, 227) and sample.orig_size == (height, width)
        got = sample.boxes[listed[key]]
        assert got.shape == (len(boxes[key]), 4)
        assert float(got.min()) >= 0 and float(got.max()) <= 226
        assert bool((got[:, 2] >= got[:, 0]).all() and (got[:, 3] >= got[:, 1]).all())
        # Within a pixel of the plain (227/W, 227/H) scaling of the original boxes.
        naive = torch.tensor(boxes[key], dtype=torch.float32) * torch.tensor(
            [227 / width, 227 / height, 227 / width, 227 / height]
        )
        assert torch.allclose(got, naive.clamp(max=226), atol=1.0)
        assert not bool(sample.difficult[listed[key]].any())


def test_full_image_box_stays_full_image(wsol_set, meta):
    _, sizes, boxes = meta
    key = next(k for k in wsol_set.ids if [0, 0, sizes[k][0] - 1, sizes[k][1] - 1] in boxes[k])
    sample = wsol_set[wsol_set.ids.index(key)]
    assert [0.0, 0.0, 226.0, 226.0] in sample.boxes[sample.labels[0]].tolist()


def test_label_only_solution_csv_agrees_with_wsolevaluation(wsol_set):
    csv_set = build_dataset("imagenet_val", root=shared_subdir(VAL), annotations=shared_subdir(SOLUTION))
    assert csv_set.ids == wsol_set.ids
    assert all(csv_set.labels_for(i) == wsol_set.labels_for(i) for i in csv_set.ids)
    sample = csv_set[0]
    assert sample.labels == wsol_set.labels_for(sample.image_id) and sample.boxes == {}


def _write_kaggle_and_xml(tmp_path: Path, ids: list[str], meta) -> tuple[Path, Path, Path]:
    """The same ground truth in the two other public formats (Kaggle CSV with boxes, ILSVRC XML)."""
    labels, sizes, boxes = meta
    wnids = imagenet_wnids()
    rows = ["ImageId,PredictionString"]
    xml_dir = tmp_path / "bbox" / "val"
    xml_dir.mkdir(parents=True)
    for key in ids:
        wnid = wnids[labels[key]]
        rows.append(f"{key}," + " ".join(f"{wnid} {' '.join(map(str, b))}" for b in boxes[key]))
        objects = "".join(
            f"<object><name>{wnid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
            f"<ymax>{b[3]}</ymax></bndbox></object>"
            for b in boxes[key]
        )
        width, height = sizes[key]
        (xml_dir / f"{key}.xml").write_text(
            f"<annotation><filename>{key}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text("\n".join(rows) + "\n")
    size_file = tmp_path / "image_sizes.txt"
    size_file.write_text("".join(f"val/{k}.JPEG,{sizes[k][0]},{sizes[k][1]}\n" for k in ids))
    return solution, xml_dir.parent, size_file


def test_kaggle_boxes_and_xml_folder_give_the_same_samples(tmp_path, wsol_set, meta):
    ids = wsol_set.ids[:6]
    solution, xml_root, size_file = _write_kaggle_and_xml(tmp_path, ids, meta)
    image_dir = shared_subdir(VAL) / "data"
    from_xml = build_dataset("imagenet_val", root=image_dir, annotations=xml_root)
    from_csv = build_dataset("imagenet_val", root=image_dir, annotations=solution, image_sizes=size_file)
    assert from_xml.ids == from_csv.ids == ids  # images without ground truth are left out
    for index in range(len(ids)):
        ref, a, b = wsol_set[index], from_xml[index], from_csv[index]
        for other in (a, b):
            assert other.labels == ref.labels and other.orig_size == ref.orig_size
            assert torch.equal(other.boxes[ref.labels[0]], ref.boxes[ref.labels[0]])
    # Without original sizes, boxes beyond the 227 image cannot be placed: the image is skipped, named.
    blind = build_dataset("imagenet_val", root=image_dir, annotations=solution)
    skipped = blind[0]
    assert not isinstance(skipped, Sample) and "image_sizes=" in skipped.reason


def test_subsets_are_deterministic(listed):
    root, annotations = shared_subdir(VAL), shared_subdir(WSOL)
    first = build_dataset("imagenet_val", root=root, annotations=annotations, limit=7)
    assert first.ids == sorted(listed)[:7]
    drawn = [
        build_dataset("imagenet_val", root=root, annotations=annotations, limit=7, subset_seed=3).ids
        for _ in range(2)
    ]
    other = build_dataset("imagenet_val", root=root, annotations=annotations, limit=7, subset_seed=4).ids
    assert drawn[0] == drawn[1] == sorted(drawn[0]) and drawn[0] != other and drawn[0] != first.ids
    assert set(drawn[0]) <= set(listed)
    # Classes by index, by name and by wnid select the same images: exactly those with that label.
    tench = [k for k, v in listed.items() if v == 0]
    for spec in (0, "tench", "n01440764", ["0"]):
        chosen = build_dataset("imagenet_val", root=root, annotations=annotations, classes=spec)
        assert chosen.ids == sorted(tench)
    with pytest.raises(DatasetError, match="unknown class"):
        build_dataset("imagenet_val", root=root, annotations=annotations, classes=["tenchh_fish"])


def test_root_layouts_and_errors(tmp_path):
    by_list = build_dataset("imagenet_val", root=shared_subdir(VAL), annotations=shared_subdir(WSOL), limit=3)
    flat = build_dataset(
        "imagenet_val", root=shared_subdir(VAL) / "data", annotations=shared_subdir(WSOL), limit=3
    )
    assert by_list.ids == flat.ids
    for root in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(DatasetError) as err:
            build_dataset("imagenet_val", root=root, annotations=shared_subdir(WSOL))
        assert "\n" not in str(err.value) and "ILSVRC2012_val_" in str(err.value)
    with pytest.raises(DatasetError, match="not recognised"):
        build_dataset("imagenet_val", root=shared_subdir(VAL), annotations=tmp_path)


# --- bad images and annotations built in tmp_path: fixed or skipped with a reason, never a traceback ---


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
