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

Bad annotations never stop a run (a file that is not COCO JSON at all, or malformed categories, is a
one-line :class:`~evalcam.data.DatasetError`): image entries without ``id``/``file_name`` and annotations
of image ids the file does not list are ignored with one warning each kind; annotations of unknown
categories, boxes that are malformed, zero-area (``w <= 0`` or ``h <= 0``), inverted or outside the image,
and undecodable segmentations are dropped or clipped with a warning per annotation, also stored in the
image's ``warnings``; images listed in the file but missing from the image folder are reported at start
and become skipped images.
"""

from __future__ import annotations

import json
import logging
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
    clean_objects,
    group_boxes,
    read_image,
    report,
    require_dir,
    rescale_boxes,
)
from evalcam.data.types import Sample

log = logging.getLogger(__name__)


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


def inclusive_box(bbox: object) -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> inclusive ``[x0, y0, x1, y1]`` of the touched pixels, *not* clamped (so the
    caller can report a box outside the image); None when malformed or of zero area."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    # x + w <= x rather than w <= 0: a width below float resolution at x is no width either.
    if not all(math.isfinite(v) for v in (x, y, w, h)) or x + w <= x or y + h <= y:
        return None
    return [
        float(math.floor(x)),
        float(math.floor(y)),
        float(math.ceil(x + w) - 1),
        float(math.ceil(y + h) - 1),
    ]


def load_instances(path: Path, name: str, layout: str) -> tuple[dict, list[dict], list[dict], list[str]]:
    """Categories ``{id: name}``, valid image entries, annotations and problems of an instances JSON.

    Only a file that is not an instances JSON at all is an error; bad entries are left out and reported.
    """
    try:
        data = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images, annotations = data["images"], data["annotations"]
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise TypeError("'images' and 'annotations' must be lists")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{name}: malformed annotation file {path} ({err!r}); expected {layout}") from err
    problems = []
    valid = [i for i in images if isinstance(i, dict) and "id" in i and i.get("file_name")]
    if len(valid) < len(images):
        problems.append(f"{len(images) - len(valid)} image entries without id or file_name ignored")
    ids = {i["id"] for i in valid}
    orphans = [a for a in annotations if not isinstance(a, dict) or a.get("image_id") not in ids]
    if orphans:
        problems.append(f"{len(orphans)} annotations of image ids not listed under 'images' ignored")
    kept = [a for a in annotations if isinstance(a, dict) and a.get("image_id") in ids]
    return categories, valid, kept, problems


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
        base = require_dir(root, self.name, layout, "EVALCAM_COCO_ROOT")
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

        categories, images, annotations, problems = load_instances(ann_file, self.name, layout)
        for problem in problems:
            log.warning("%s: %s: %s", self.name, ann_file.name, problem)
        cat_ids = sorted(categories)
        self.cat_to_index = {cid: i for i, cid in enumerate(cat_ids)}
        self.class_names = [categories[cid] for cid in cat_ids]
        by_image: dict[object, list[dict]] = {}
        for ann in annotations:
            by_image.setdefault(ann["image_id"], []).append(ann)
        # Plain dicts: small to pickle into DataLoader workers.
        self.images: dict[str, dict] = {}
        self.anns: dict[str, list[dict]] = {}
        self.notes: dict[str, list[str]] = {}
        for info in images:
            key = Path(info["file_name"]).stem
            anns = by_image.get(info["id"], [])
            if skip_empty and not anns:
                continue
            self.images[key] = info
            self.anns[key] = [a for a in anns if a.get("category_id") in self.cat_to_index]
            self.notes[key] = [
                f"{key}: annotation {a.get('id')} has unknown category_id {a.get('category_id')!r}; dropped"
                for a in anns
                if a.get("category_id") not in self.cat_to_index
            ]
        self.ids = sorted(self.images)
        self.subset(limit, classes, subset_seed)
        # Only what the kept images need travels to DataLoader workers.
        self.images = {k: self.images[k] for k in self.ids}
        self.anns = {k: self.anns[k] for k in self.ids}
        self.notes = {k: self.notes[k] for k in self.ids}
        missing = [k for k in self.ids if not (self.image_dir / self.images[k]["file_name"]).is_file()]
        if missing:
            log.warning(
                "%s: %d of %d images listed in %s are missing from %s and will be skipped, e.g. %s",
                self.name,
                len(missing),
                len(self.ids),
                ann_file.name,
                self.image_dir,
                missing[:3],
            )

    @property
    def has_masks(self) -> bool:  # type: ignore[override]
        return self.with_masks

    def labels_for(self, image_id: str) -> list[int]:
        return sorted({self.cat_to_index[a["category_id"]] for a in self.anns[image_id]})

    def load(self, index: int) -> Sample:
        image_id = self.ids[index]
        info = self.images[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{info['file_name']} is listed in the annotation file but missing")
        image, stored = read_image(path)
        decoded = (int(image.shape[-2]), int(image.shape[-1]))
        height, width = _positive(info.get("height"), stored[0]), _positive(info.get("width"), stored[1])
        objects = []
        notes = list(self.notes.get(image_id, []))
        labels: set[int] = set()
        union: dict[int, np.ndarray] = {}
        for ann in self.anns[image_id]:
            cls = self.cat_to_index[ann["category_id"]]
            labels.add(cls)
            box = inclusive_box(ann.get("bbox"))
            if box is None:
                notes.append(
                    f"{image_id}: annotation {ann.get('id')} bbox {ann.get('bbox')!r} is malformed or has "
                    f"zero area; box dropped"
                )
            else:
                objects.append((cls, box, bool(ann.get("iscrowd", 0))))
            if self.with_masks and ann.get("segmentation"):
                try:
                    mask = annotation_mask(ann["segmentation"], height, width)
                except Exception as err:  # pycocotools raises bare Exception/TypeError/IndexError alike
                    notes.append(
                        f"{image_id}: annotation {ann.get('id')} segmentation unreadable ({err}); dropped"
                    )
                    continue
                union[cls] = union[cls] | mask if cls in union else mask
        if not labels and notes:
            raise ValueError(f"no annotation of a known category ({notes[0]})")
        objects, box_notes = clean_objects(objects, (height, width), image_id)
        notes += box_notes
        report(notes, log)
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
            labels=sorted(labels),
            boxes={c: rescale_boxes(b, (height, width), decoded) for c, b in boxes.items()},
            difficult=difficult,
            masks=masks,
            orig_size=(height, width),
            warnings=notes,
        )


def _positive(value: object, fallback: int) -> int:
    """An image entry's height/width, or the stored size when absent or unusable."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return fallback
    return number if number > 0 else fallback
