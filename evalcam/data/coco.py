"""MS COCO 2014 / 2017 detection annotations (``dataset=coco2014`` / ``coco2017``), read with pycocotools.

Layout: ``ROOT/annotations/instances_<split><year>.json`` and the images in ``ROOT/<split><year>/`` (or
``ROOT/images/<split><year>/``), as unpacked from cocodataset.org; ``annotations=`` may name the JSON file
directly.

Conventions (documented because COCO differs from VOC/ILSVRC):

- COCO boxes are ``[x, y, w, h]`` floats in continuous coordinates (pixel ``i`` spans ``[i, i + 1)``).
  evalcam boxes are inclusive pixel indices, so a box becomes the pixels it touches:
  ``[floor(x), floor(y), ceil(x + w) - 1, ceil(y + h) - 1]``, clamped to the image.
- Category ids (1..90 with gaps) are mapped to contiguous indices 0..79 in increasing id order;
  ``class_names`` keeps COCO's names.
- ``iscrowd`` annotations (one region covering a group of objects) are kept as *difficult* boxes, as VOC
  does for objects that should neither count nor be penalised; their pixels belong to the class mask.
- ``Sample.masks[c]`` is the union of all instance masks of class ``c``.
- Images without any annotation are left out of the evaluation list unless ``skip_empty=False``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evalcam.data.base import (
    ClassSpec,
    DatasetError,
    EvalDataset,
    group_boxes,
    read_rgb,
    require_dir,
    rescale_boxes,
)
from evalcam.data.types import Sample


def coco_layout(year: str, split: str) -> str:
    return (
        f"ROOT/annotations/instances_{split}{year}.json and ROOT/{split}{year}/*.jpg "
        f"(or annotations=PATH/TO/instances_{split}{year}.json)"
    )


def coco_box(bbox: list[float], height: int, width: int) -> list[float]:
    """COCO ``[x, y, w, h]`` (continuous) -> inclusive box ``[x0, y0, x1, y1]`` of the touched pixels."""
    x, y, w, h = (float(v) for v in bbox)
    x0 = min(max(math.floor(x), 0), width - 1)
    y0 = min(max(math.floor(y), 0), height - 1)
    x1 = min(max(math.ceil(x + w) - 1, x0), width - 1)
    y1 = min(max(math.ceil(y + h) - 1, y0), height - 1)
    return [float(x0), float(y0), float(x1), float(y1)]


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Polygon / uncompressed RLE / compressed RLE segmentation -> bool ``[H, W]`` (pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy 2's copy-keyword DeprecationWarning once per call.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


class COCODataset(EvalDataset):
    """COCO instances of one split; boxes, crowd-as-difficult flags and per-class union masks."""

    label_space = "coco"

    def __init__(
        self,
        root: str | Path | None = None,
        year: str | int = "2017",
        split: str = "val",
        annotations: str | Path | None = None,
        masks: bool = True,
        skip_empty: bool = True,
        limit: int | None = None,
        classes: list[ClassSpec] | ClassSpec | None = None,
        subset_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.year, self.split = str(year), str(split)
        self.name = f"coco{self.year}"
        self.with_masks = bool(masks)
        layout = coco_layout(self.year, self.split)
        base = require_dir(root, self.name, layout)
        ann_file = (
            Path(annotations)
            if annotations
            else base / "annotations" / f"instances_{self.split}{self.year}.json"
        )
        if not ann_file.is_file():
            raise DatasetError(f"{self.name}: annotation file {ann_file} not found; expected {layout}")
        folder = f"{self.split}{self.year}"
        candidates = (base / folder, base / "images" / folder, base)
        self.image_dir = next((c for c in candidates if c.is_dir() and any(c.glob("*.jpg"))), None)
        if self.image_dir is None:
            raise DatasetError(f"{self.name}: no images in {base / folder}; expected {layout}")

        from pycocotools.coco import COCO

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
                coco = COCO(str(ann_file))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
            raise DatasetError(
                f"{self.name}: malformed annotation file {ann_file} ({err}); expected {layout}"
            ) from err
        cat_ids = sorted(coco.getCatIds())
        self.category_ids = cat_ids
        self.cat_to_index = {cid: i for i, cid in enumerate(cat_ids)}
        self.class_names = [coco.cats[cid]["name"] for cid in cat_ids]
        # Plain dicts instead of the COCO object: small to pickle into DataLoader workers.
        self.images: dict[str, dict] = {}
        self.anns: dict[str, list[dict]] = {}
        for img_id, info in coco.imgs.items():
            key = Path(info["file_name"]).stem
            anns = coco.imgToAnns.get(img_id, [])
            if skip_empty and not anns:
                continue
            self.images[key] = info
            self.anns[key] = [a for a in anns if a.get("category_id") in self.cat_to_index]
        self.ids = sorted(self.images)
        self.subset(limit, classes, subset_seed)
        # Only what the kept images need travels to DataLoader workers.
        self.images = {k: self.images[k] for k in self.ids}
        self.anns = {k: self.anns[k] for k in self.ids}

    def labels_for(self, image_id: str) -> list[int]:
        return sorted({self.cat_to_index[a["category_id"]] for a in self.anns[image_id]})

    def load(self, index: int) -> Sample:
        image_id = self.ids[index]
        info = self.images[image_id]
        image = read_rgb(self.image_dir / info["file_name"])
        decoded = (int(image.shape[-2]), int(image.shape[-1]))
        height, width = int(info.get("height") or decoded[0]), int(info.get("width") or decoded[1])
        objects = []
        union: dict[int, np.ndarray] = {}
        for ann in self.anns[image_id]:
            cls = self.cat_to_index[ann["category_id"]]
            objects.append((cls, coco_box(ann["bbox"], height, width), bool(ann.get("iscrowd", 0))))
            if self.with_masks and ann.get("segmentation"):
                mask = annotation_mask(ann["segmentation"], height, width)
                union[cls] = union[cls] | mask if cls in union else mask
        boxes, difficult = group_boxes(objects)
        masks = None
        if self.with_masks:
            masks = {}
            for cls, mask in sorted(union.items()):
                m = torch.from_numpy(mask)
                if (height, width) != decoded:
                    m = F.interpolate(m[None, None].float(), size=decoded, mode="nearest")[0, 0] > 0.5
                masks[cls] = m
        return Sample(
            image=image,
            image_id=image_id,
            labels=sorted(boxes),
            boxes={c: rescale_boxes(b, (height, width), decoded) for c, b in boxes.items()},
            difficult=difficult,
            masks=masks,
            orig_size=(height, width),
        )
