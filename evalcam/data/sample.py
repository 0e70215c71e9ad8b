"""The embedded default dataset: real photos that installed packages ship, with boxes kept in this repo.

Images come from scikit-image's data module, scikit-learn's sample images and matplotlib's sample data,
so a fresh install can run a real benchmark with nothing to download. Labels are ImageNet-1k indices;
``sample_annotations.json`` holds the hand-annotated boxes (inclusive 0-based pixel indices).
"""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from evalcam.data.base import ClassSpec, EvalDataset, uint8_rgb
from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.data.types import Sample

# The files behind the sources the annotations name, inside their packages' folders: read directly, they
# cost the photo's decode only. The packages' loaders would import scikit-learn (~0.5 s, for china.jpg),
# hash the file on every load (scikit-image's fetcher) and decode files the photo does not need
# (``stereo_motorcycle`` decodes both views and a disparity map, ``load_sample_image`` both jpgs). The
# decoded arrays are the loaders' own (Pillow underneath all three; tests/test_data_sample.py compares them).
PACKAGED_FILES = {
    "skimage:chelsea": ("skimage", "data/chelsea.png"),
    "skimage:coffee": ("skimage", "data/coffee.png"),
    "skimage:astronaut": ("skimage", "data/astronaut.png"),
    "skimage:rocket": ("skimage", "data/rocket.jpg"),
    "skimage:camera": ("skimage", "data/camera.png"),
    "skimage:clock": ("skimage", "data/clock_motion.png"),
    "skimage:motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "skimage:motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "sklearn:china.jpg": ("sklearn", "datasets/images/china.jpg"),
    "sklearn:flower.jpg": ("sklearn", "datasets/images/flower.jpg"),
    "matplotlib:grace_hopper.jpg": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "matplotlib:Minduka_Present_Blue_Pack.png": (
        "matplotlib",
        "mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
    ),
}

# Photos decoded in this process, by source: a sweep's points read the same photos again (~5 ms each).
# Read-only arrays, ~7 MB for the 11 default photos; load_source hands out copies.
_decoded: dict[str, tuple[tuple[str, int, int], np.ndarray]] = {}


def packaged_file(source: str) -> Path | None:
    """The file of ``source`` inside its installed package, found without importing the package; None for
    a source not in :data:`PACKAGED_FILES` or a file that is not where it was."""
    entry = PACKAGED_FILES.get(source)
    if entry is None:
        return None
    package, relative = entry
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / relative
        if path.is_file():
            return path
    return None


def load_source(source: str) -> np.ndarray:
    """Load a packaged photo named ``package:name`` as an HWC uint8 array (a fresh, writable one)."""
    path = packaged_file(source)
    if path is None:
        return _load_with_package(source)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    kept = _decoded.get(source)
    if kept is None or kept[0] != key:
        from PIL import Image

        with Image.open(path) as img:
            # matplotlib's photo went through convert("RGB") (its png is RGBA); the others are decoded as
            # the packages' loaders decode them (np.asarray of the opened image: RGB, or L for gray).
            array = np.array(img.convert("RGB") if source.startswith("matplotlib:") else img)
        array.setflags(write=False)
        kept = _decoded[source] = (key, array)
    return kept[1].copy()


def _load_with_package(source: str) -> np.ndarray:
    """``source`` through its package's own loader (a photo not in :data:`PACKAGED_FILES`)."""
    package, _, name = source.partition(":")
    if package == "skimage":
        from skimage import data

        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            return left if name.endswith("left") else right
        return getattr(data, name)()
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    if package == "matplotlib":
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data(name)) as img:
            return np.array(img.convert("RGB"))
    raise ValueError(f"unknown image source {source!r}: expected skimage:, sklearn: or matplotlib:")


def read_annotations() -> dict:
    text = resources.files("evalcam.data").joinpath("sample_annotations.json").read_text()
    return json.loads(text)


class SampleDataset(EvalDataset):
    """Packaged photos with hand-annotated ImageNet boxes (``dataset=sample``)."""

    name = "sample"
    label_space = "imagenet"

    def __init__(
        self,
        limit: int | None = None,
        ids: list[str] | None = None,
        classes: list[ClassSpec] | ClassSpec | None = None,
        subset_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.records = {r["id"]: r for r in read_annotations()["images"]}
        self.ids = list(ids) if ids else list(self.records)
        unknown = [i for i in self.ids if i not in self.records]
        if unknown:
            raise ValueError(f"unknown sample ids {unknown}; valid: {sorted(self.records)}")
        self.class_names = imagenet_categories()
        self.subset(limit, classes, subset_seed)

    def labels_for(self, image_id: str) -> list[int]:
        return sorted({c for obj in self.records[image_id]["objects"] for c in obj["classes"]})

    def load(self, index: int) -> Sample:
        record = self.records[self.ids[index]]
        image = uint8_rgb(load_source(record["source"]))
        boxes: dict[int, list[list[float]]] = {}
        difficult: dict[int, list[bool]] = {}
        for obj in record["objects"]:
            for cls in obj["classes"]:
                boxes.setdefault(cls, []).append([float(v) for v in obj["box"]])
                difficult.setdefault(cls, []).append(bool(obj.get("difficult", False)))
        return Sample(
            image=image,
            image_id=record["id"],
            labels=sorted(boxes),
            boxes={c: torch.tensor(b, dtype=torch.float32) for c, b in boxes.items()},
            difficult={c: torch.tensor(d, dtype=torch.bool) for c, d in difficult.items()},
            orig_size=(int(image.shape[-2]), int(image.shape[-1])),
        )
