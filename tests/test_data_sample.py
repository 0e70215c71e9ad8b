"""The embedded dataset's photos: read from the packages' folders, identical to the packages' loaders."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from evalcam.data import sample
from evalcam.data.sample import PACKAGED_FILES, _load_with_package, load_source, read_annotations


def test_every_annotated_photo_has_a_packaged_file():
    for record in read_annotations()["images"]:
        assert record["source"] in PACKAGED_FILES
        assert sample.packaged_file(record["source"]) is not None, record["source"]


@pytest.mark.parametrize("source", sorted(PACKAGED_FILES))
def test_direct_read_is_identical_to_the_package_loader(source):
    direct = load_source(source)
    loaded = _load_with_package(source)
    assert direct.dtype == loaded.dtype == np.uint8
    assert direct.shape == loaded.shape
    assert np.array_equal(direct, loaded)


def test_copies_are_writable_and_independent():
    first = load_source("skimage:chelsea")
    first[:] = 0
    again = load_source("skimage:chelsea")
    assert again.flags.writeable and again.any()
    assert not np.shares_memory(first, again)


def test_a_changed_file_is_decoded_again(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    monkeypatch.setattr(sample, "packaged_file", lambda source: path)
    monkeypatch.setattr(sample, "_decoded", {})
    Image.fromarray(np.full((4, 5, 3), 10, np.uint8)).save(path)
    assert (load_source("skimage:test") == 10).all()
    size = path.stat().st_size
    Image.fromarray(np.full((4, 5, 3), 200, np.uint8)).save(path)
    assert path.stat().st_size == size  # a rewrite of the same size: the modification time tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even within the clock's resolution
    assert (load_source("skimage:test") == 200).all()


def test_unknown_sources_still_go_through_the_packages():
    with pytest.raises(ValueError, match="unknown image source"):
        load_source("nowhere:photo.png")


def test_reading_the_photos_imports_no_loader_package():
    code = (
        "import sys; from evalcam.data.sample import load_source, read_annotations\n"
        "for r in read_annotations()['images']: load_source(r['source'])\n"
        "print(sorted(m for m in ('sklearn', 'skimage', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
