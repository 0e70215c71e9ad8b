"""The embedded default dataset: real photos that installed packages ship, with boxes kept in this repo.

Images come from scikit-image's data module, scikit-learn's sample images and matplotlib's sample data,
so a fresh install can run a real benchmark with nothing to download. Labels are ImageNet-1k indices;
``sample_annotations.json`` holds the hand-annotated boxes (inclusive 0-based pixel indices).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import torch

from evalcam.data.base import ClassSpec, EvalDataset, uint8_rgb
from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.data.types import Sample


def load_source(source: str) -> np.ndarray:
    """Load a packaged photo named ``package:name`` as an HWC uint8 array."""
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
