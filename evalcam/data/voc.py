"""PASCAL VOC 2007 / 2012 in the original VOCdevkit layout (``dataset=voc2007`` / ``voc2012``).

``ROOT/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main/<split>.txt}``; ``root`` may also point
at ``VOCdevkit`` or at the ``VOC2007`` folder itself. Every object of the XML is kept with its
``difficult`` flag (the VOC protocol ignores difficult objects rather than dropping them, and the
pointing game of Zhang et al., ECCV 2016, reports an "all" and a "difficult" subset).

VOC boxes are 1-based inclusive pixel indices (MATLAB convention of the devkit); evalcam boxes are 0-based
inclusive, so 1 is subtracted from every coordinate.

Bad annotations never stop a run: an unparsable XML file makes its image a skipped image (listed with the
reason); an object of an unknown class is dropped with a warning (the image is skipped when no object of a
VOC class is left); boxes outside the image, inverted or with non-numeric coordinates are clipped or
dropped by :func:`evalcam.data.base.clean_objects`, each with a warning that also lands in the image's
``warnings`` column of the run's table.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

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

# Standard VOC class order (devkit's VOCinit.m); index = position.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

SPLITS = ("train", "val", "trainval", "test")


def voc_layout(year: str, split: str) -> str:
    return (
        f"ROOT/VOCdevkit/VOC{year}/{{JPEGImages/ID.jpg, Annotations/ID.xml, ImageSets/Main/{split}.txt}} "
        f"(root may also be VOCdevkit or VOC{year} itself)"
    )


def find_voc_dir(root: str | Path | None, year: str, split: str) -> Path:
    """The ``VOC<year>`` folder under ``root``, or a one-line DatasetError naming the expected layout."""
    base = require_dir(root, f"voc{year}", voc_layout(year, split), "EVALCAM_VOC_ROOT")
    for candidate in (base / "VOCdevkit" / f"VOC{year}", base / f"VOC{year}", base):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"voc{year}: no VOC{year} folder with JPEGImages/ and Annotations/ under {base}; "
        f"expected {voc_layout(year, split)}"
    )


def number(text: str | None) -> float:
    """A coordinate as float; NaN when missing or not a number (the box is then dropped with a warning)."""
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


class VOCAnnotation(NamedTuple):
    """One parsed VOC XML file. ``objects`` hold 0-based boxes as written (checked against the image at
    load time); ``labels`` also keep classes whose objects lack a box; ``notes`` are per-object warnings."""

    size: tuple[int, int] | None
    objects: list[tuple[int, list[float], bool]]
    labels: set[int]
    notes: list[str]


def parse_voc_xml(path: Path) -> VOCAnnotation:
    """Read one VOC annotation: ``(H, W)`` from ``<size>`` and ``(class, 0-based box, difficult)`` objects.

    Raises ``ET.ParseError`` for malformed XML and ``ValueError`` when no object of a VOC class is left;
    objects of unknown classes, objects without ``<bndbox>`` and an unreadable ``<size>`` give notes.
    """
    root = ET.parse(path).getroot()
    size = root.find("size")
    hw = None
    notes: list[str] = []
    if size is not None:
        height, width = number(size.findtext("height")), number(size.findtext("width"))
        if math.isfinite(height) and math.isfinite(width) and min(height, width) > 0:
            hw = (int(height), int(width))
        elif not (height == 0 and width == 0):  # a few real VOC files store 0x0: silently use the image
            notes.append(f"{path.name}: unreadable <size> {width}x{height}; the decoded image size is used")
    objects = []
    labels: set[int] = set()
    unknown = []
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in VOC_CLASSES:
            unknown.append(name)
            notes.append(f"{path.name}: unknown VOC class {name!r}; object dropped")
            continue
        cls = VOC_CLASSES.index(name)
        labels.add(cls)
        bnd = obj.find("bndbox")
        if bnd is None:
            notes.append(f"{path.name}: {name} object has no <bndbox>; class kept, no box")
            continue
        # Some VOC2012 files store coordinates as floats ("273.0"); -1 moves 1-based to 0-based.
        box = [number(bnd.findtext(k)) - 1.0 for k in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (obj.findtext("difficult") or "0").strip() in {"1", "1.0", "true", "True"}
        objects.append((cls, box, difficult))
    if not labels:
        found = f"only unknown classes {sorted(set(unknown))}" if unknown else "no <object>"
        raise ValueError(f"{path.name}: {found}; expected one of the 20 VOC classes")
    return VOCAnnotation(hw, objects, labels, notes)


class VOCDataset(EvalDataset):
    """One VOC split, every object with its difficult flag; ``labels`` = classes with at least one object
    (difficult-only classes included; their flags say so)."""

    label_space = "voc"

    def __init__(
        self,
        root: str | Path | None = None,
        year: str | int = "2007",
        split: str = "test",
        limit: int | None = None,
        classes: list[ClassSpec] | ClassSpec | None = None,
        subset_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.year, self.split = str(year), str(split)
        self.name = f"voc{self.year}"
        if self.split not in SPLITS:
            raise DatasetError(
                f"{self.name}: unknown split {self.split!r}; choose one of {', '.join(SPLITS)}"
            )
        self.voc_dir = find_voc_dir(root, self.year, self.split)
        listing = self.voc_dir / "ImageSets" / "Main" / f"{self.split}.txt"
        if not listing.is_file():
            raise DatasetError(
                f"{self.name}: split list {listing} not found; expected {voc_layout(self.year, self.split)}"
            )
        self.class_names = list(VOC_CLASSES)
        ids = sorted({line.split()[0] for line in listing.read_text().splitlines() if line.strip()})
        # Annotations are parsed up front (a few ms per 100 files) so labels and class filters need no
        # image decoding; a broken file is remembered and reported as a skipped image.
        self.annotations: dict[str, VOCAnnotation] = {}
        self.errors: dict[str, str] = {}
        for image_id in ids:
            try:
                self.annotations[image_id] = parse_voc_xml(self.voc_dir / "Annotations" / f"{image_id}.xml")
            except (ET.ParseError, OSError, ValueError) as err:
                self.errors[image_id] = f"annotation unreadable: {type(err).__name__}: {err}"
        if self.errors:
            log.warning(
                "%s: %d annotation file(s) unreadable, e.g. %s",
                self.name,
                len(self.errors),
                next(iter(self.errors.values())),
            )
        self.ids = ids
        self.subset(limit, classes, subset_seed)
        # Only what the kept images need travels to DataLoader workers.
        self.annotations = {k: self.annotations[k] for k in self.ids if k in self.annotations}
        self.errors = {k: self.errors[k] for k in self.ids if k in self.errors}

    def labels_for(self, image_id: str) -> list[int]:
        if image_id in self.errors:
            return []
        return sorted(self.annotations[image_id].labels)

    def load(self, index: int) -> Sample:
        image_id = self.ids[index]
        if image_id in self.errors:
            raise ValueError(self.errors[image_id])
        annotation = self.annotations[image_id]
        image, stored = read_image(self.voc_dir / "JPEGImages" / f"{image_id}.jpg")
        decoded = (int(image.shape[-2]), int(image.shape[-1]))
        original = annotation.size or stored
        objects, notes = clean_objects(annotation.objects, original, f"{image_id}.xml")
        notes = annotation.notes + notes
        report(notes, log)
        boxes, difficult = group_boxes(objects)
        return Sample(
            image=image,
            image_id=image_id,
            labels=sorted(annotation.labels),
            boxes={c: rescale_boxes(b, original, decoded) for c, b in boxes.items()},
            difficult=difficult,
            orig_size=original,
            warnings=notes,
        )
