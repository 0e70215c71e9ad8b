"""evalcam.data.record_cache: parsed annotation files kept on disk, re-parsed when a file changes."""

from __future__ import annotations

import math
import os

from conftest import shared_subdir

from evalcam.data import build_dataset
from evalcam.data.imagenet import ImageRecord
from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.data.record_cache import RecordTable, cached_table


def _records() -> dict[str, ImageRecord]:
    return {
        "a": ImageRecord(
            labels={3, 1},
            objects=[(1, [0.0, 1.0, 5.0, 6.0]), (3, [2.0, 2.0, 9.0, math.nan])],
            size=(480, 640),
        ),
        "b": ImageRecord(labels=set(), objects=[], size=None, notes=["unknown synset n0"]),
        "c": ImageRecord(labels={999}, objects=[(999, [7.5, 0.0, 8.5, 1.0])], size=(10, 20)),
    }


def _same(x: ImageRecord, y: ImageRecord) -> bool:
    boxes_x = [(c, [v if not math.isnan(v) else "nan" for v in b]) for c, b in x.objects]
    boxes_y = [(c, [v if not math.isnan(v) else "nan" for v in b]) for c, b in y.objects]
    return (x.labels, boxes_x, x.size, x.notes) == (y.labels, boxes_y, y.size, y.notes)


def test_table_round_trips_records_through_a_file(tmp_path):
    records = _records()
    path = tmp_path / "t.npz"
    RecordTable.from_records(records).save(path)
    back = RecordTable.load(path).select(["c", "a", "missing", "b"])
    assert list(back) == ["c", "a", "b"]
    for key, record in back.items():
        assert _same(record, records[key]), key
    back["a"].labels.add(7)  # selected records are fresh copies
    assert 7 not in RecordTable.load(path).select(["a"])["a"].labels


def test_cache_parses_once_and_again_when_the_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALCAM_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "labels.csv"
    source.write_text("v1")
    calls = []

    def parse():
        calls.append(source.read_text())
        return _records()

    first = cached_table([source], "csv", parse).select(["a"])
    second = cached_table([source], "csv", parse).select(["a"])
    assert len(calls) == 1 and _same(first["a"], second["a"])
    source.write_text("v2, a longer file")  # another size and mtime: parsed again
    os.utime(source, ns=(1, 1))
    cached_table([source], "csv", parse)
    assert calls == ["v1", "v2, a longer file"]
    # A truncated cache file is parsed around, never an error.
    for cached in (tmp_path / "cache").glob("*.npz"):
        cached.write_bytes(cached.read_bytes()[:100])
    assert _same(cached_table([source], "csv", parse).select(["a"])["a"], _records()["a"])
    assert len(calls) == 3


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALCAM_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = tmp_path / "labels.csv"
    source.write_text("x")
    cached_table([source], "csv", _records)
    assert not list(tmp_path.rglob("*.npz"))


def test_real_ilsvrc_annotations_are_identical_through_the_cache(tmp_path, monkeypatch):
    root = shared_subdir("imagenet_val_227/ILSVRC2012_VAL_SET")
    annotations = shared_subdir("imagenet_meta/wsolevaluation_ILSVRC_test")
    from evalcam.data import imagenet

    def samples(cache: str):
        monkeypatch.setenv("EVALCAM_CACHE_DIR", cache)
        imagenet.read_cached.cache_clear()  # the in-process layer would hide the disk cache
        dataset = build_dataset("imagenet_val", root=root, annotations=annotations, limit=40)
        loaded = [dataset[i] for i in range(len(dataset))]
        return [(s.image_id, s.labels, {c: b.tolist() for c, b in s.boxes.items()}) for s in loaded]

    plain = samples("off")
    written = samples(str(tmp_path))
    assert list(tmp_path.glob("annotations-wsol-*.npz"))
    assert samples(str(tmp_path)) == written == plain


def test_shipped_category_names_equal_torchvision_metadata():
    from torchvision.models import ResNet50_Weights

    assert imagenet_categories() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
