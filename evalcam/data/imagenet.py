"""ILSVRC2012 validation images with their localization ground truth (``dataset=imagenet_val``).

The images sit in a flat folder under their original names (``ILSVRC2012_val_00000001.JPEG``); the ground
truth comes from whichever of the public formats is at hand:

- the official per-image XML (``ILSVRC2012_bbox_val_v3``: ``val/ILSVRC2012_val_00000001.xml``),
- wsolevaluation's metadata folder (``localization.txt``, ``class_labels.txt``, ``image_sizes.txt``;
  Choe et al., CVPR 2020), boxes in the original pixels,
- Kaggle's ``LOC_val_solution.csv`` (``synset x0 y0 x1 y1 synset ...``; a label-only variant holds just
  the synsets).

All three store ``[x0, y0, x1, y1]`` as 0-based inclusive pixel indices of the original photo (the same
numbers in all three), which is evalcam's convention, so boxes are not shifted. Class indices follow
torchvision (the sorted WordNet ids in ``imagenet_wnids.txt``). Images stored at another size than the
original (e.g. a prescaled 227x227 copy) get their boxes rescaled onto the decoded image.

Bad annotations never stop a run: an unknown synset drops its object (or its label) with a warning; an
unreadable XML file makes its image a skipped image (listed with the reason); boxes outside the image,
inverted or with non-numeric coordinates are clipped or dropped by
:func:`evalcam.data.base.clean_objects`, each with a warning that also lands in the image's ``warnings``.
A metadata file that cannot be read at all (wsolevaluation, CSV header) is a one-line
:class:`~evalcam.data.DatasetError` naming the file and line.
"""

from __future__ import annotations

import csv
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

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
from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.data.record_cache import RecordTable, cached_table, source_key
from evalcam.data.types import Sample

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
LAYOUT = (
    "ROOT/ILSVRC2012_val_XXXXXXXX.JPEG (flat folder, or ROOT/dataset.txt listing './data/NAME, label') "
    "and annotations= an ILSVRC2012_bbox_val XML folder, a wsolevaluation metadata folder "
    "(localization.txt, class_labels.txt, image_sizes.txt) or LOC_val_solution.csv"
)


@cache
def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC2012 WordNet ids in torchvision's class-index order (regenerate with
    ``scripts/make_imagenet_wnids.py``)."""
    text = resources.files("evalcam.data").joinpath("imagenet_wnids.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@cache
def wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


@dataclass
class ImageRecord:
    """Ground truth of one image: classes, ``(class, box)`` pairs and the original ``(H, W)`` if known."""

    labels: set[int] = field(default_factory=set)
    objects: list[tuple[int, list[float]]] = field(default_factory=list)
    size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)  # annotation problems, reported when the image loads


def image_key(name: str) -> str:
    """Any of ``val/X.JPEG``, ``./data/X.JPEG``, ``X.xml``, ``X`` -> the image id ``X``."""
    # String operations, not Path: this runs on every line of 50k-image metadata files.
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base


def _number(text: str | None) -> float:
    """A coordinate as float; NaN when missing or not a number (the box is then dropped with a warning)."""
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def read_wsolevaluation(folder: Path) -> dict[str, ImageRecord]:
    """wsolevaluation metadata (``class_labels.txt``, ``image_sizes.txt``, ``localization.txt``)."""
    records: dict[str, ImageRecord] = {}
    by_name: dict[str, ImageRecord] = {}  # the three files name images identically: key once, reuse
    where = str(folder)
    try:
        for number, line in enumerate((folder / "class_labels.txt").read_text().splitlines(), 1):
            where = f"{folder / 'class_labels.txt'} line {number}"
            if line.strip():
                name, label = line.rsplit(",", 1)
                if not 0 <= int(label) < len(imagenet_wnids()):
                    raise ValueError(f"class {int(label)} outside 0..{len(imagenet_wnids()) - 1}")
                record = by_name.get(name)
                if record is None:
                    record = by_name[name] = records.setdefault(image_key(name), ImageRecord())
                record.labels.add(int(label))
        for number, line in enumerate((folder / "image_sizes.txt").read_text().splitlines(), 1):
            where = f"{folder / 'image_sizes.txt'} line {number}"
            if line.strip():
                name, width, height = line.split(",")
                if name in by_name:
                    by_name[name].size = (int(height), int(width))
        where = str(folder / "localization.txt")
        for line in (folder / "localization.txt").read_text().splitlines():
            if line.strip():
                name, *coords = line.split(",")
                record = by_name.get(name)
                if record is not None:
                    # Bad coordinates become NaN: the box is dropped with a warning when the image loads.
                    box = [_number(v) for v in coords]
                    # wsolevaluation images carry one class, so every box belongs to it.
                    record.objects.extend((cls, box) for cls in record.labels)
    except (ValueError, OSError) as err:
        raise DatasetError(f"malformed wsolevaluation metadata: {where}: {err}") from err
    return records


def read_solution_csv(path: Path) -> dict[str, ImageRecord]:
    """Kaggle ``LOC_val_solution.csv``: ``ImageId,PredictionString`` with ``synset x0 y0 x1 y1`` groups,
    or bare synsets (labels without boxes)."""
    records: dict[str, ImageRecord] = {}
    wnids = wnid_index()
    try:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                record = records.setdefault(image_key(row["ImageId"]), ImageRecord())
                tokens = (row["PredictionString"] or "").split()
                i = 0
                while i < len(tokens):
                    cls = wnids.get(tokens[i])
                    coords = tokens[i + 1 : i + 5]
                    # Only four numbers make a box: a following word is the next (maybe unknown) label.
                    has_box = len(coords) == 4 and all(math.isfinite(_number(t)) for t in coords)
                    if cls is None:
                        record.notes.append(
                            f"{path.name} {row['ImageId']}: {tokens[i]!r} is not a synset; dropped"
                        )
                    else:
                        record.labels.add(cls)
                        if has_box:
                            record.objects.append((cls, [_number(v) for v in coords]))
                    i += 5 if has_box else 1
    except (KeyError, OSError, csv.Error, UnicodeDecodeError) as err:
        raise DatasetError(
            f"malformed LOC_val_solution.csv {path}: {err!r} (expected columns ImageId,PredictionString)"
        ) from err
    return records


def read_bbox_xml(path: Path) -> ImageRecord:
    """One ILSVRC2012_bbox_val XML file (PASCAL-style ``<object><name>wnid</name><bndbox>``)."""
    root = ET.parse(path).getroot()
    record = ImageRecord()
    size = root.find("size")
    if size is not None:
        height, width = _number(size.findtext("height")), _number(size.findtext("width"))
        if math.isfinite(height) and math.isfinite(width) and min(height, width) > 0:
            record.size = (int(height), int(width))
        else:
            record.notes.append(f"{path.name}: unreadable <size> {width}x{height}; the image's size is used")
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        cls = wnid_index().get(name)
        if cls is None:
            record.notes.append(f"{path.name}: {name!r} is not an ILSVRC2012 synset; object dropped")
            continue
        record.labels.add(cls)
        bnd = obj.find("bndbox")
        if bnd is not None:
            record.objects.append((cls, [_number(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]))
    if not record.labels:
        raise ValueError(f"{path.name}: no object of an ILSVRC2012 synset")
    return record


def read_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """``name,W,H`` lines (wsolevaluation ``image_sizes.txt``) -> {id: (H, W)}."""
    sizes = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, width, height = line.split(",")
            sizes[image_key(name)] = (int(height), int(width))
    return sizes


def read_image_list(path: Path) -> list[tuple[Path, int | None]]:
    """``./data/NAME.JPEG, label`` (Caffe's list format), ``NAME label`` or bare names; paths relative to
    the list's folder."""
    entries = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        parts = [p for p in line.replace(",", " ").split() if p]
        label = int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else None
        entries.append((path.parent / parts[0], label))
    return entries


WSOL_FILES = ("class_labels.txt", "image_sizes.txt", "localization.txt")


@lru_cache(maxsize=4)
def read_cached(path: str, kind: str, key: str) -> RecordTable:
    """50k-image metadata takes seconds to parse: parsed once per machine (on disk, see
    :mod:`evalcam.data.record_cache`) and once per process (here); ``key`` names the files' versions."""
    del key  # part of the in-process cache key only: an edited file is read again
    source = Path(path)
    if kind == "csv":
        return cached_table([source], kind, lambda: read_solution_csv(source))
    files = [source / name for name in WSOL_FILES if (source / name).is_file()]
    return cached_table(files, kind, lambda: read_wsolevaluation(source))


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


class ImageNetVal(EvalDataset):
    """ILSVRC2012 val for weakly-supervised localization (Grad-CAM §4.1 / wsolevaluation protocol).

    ``root``: folder of the val JPEGs (flat), or a folder whose ``dataset.txt`` lists them.
    ``annotations``: XML folder, wsolevaluation folder or ``LOC_val_solution.csv`` (see module doc).
    ``image_list``: optional list of the images to use (Caffe format); the order is still sorted ids.
    ``image_sizes``: optional ``name,W,H`` file giving original sizes to sources without them (Kaggle CSV).
    Images are evaluated in sorted id order; images without ground truth are dropped (logged).
    """

    name = "imagenet_val"
    label_space = "imagenet"

    def __init__(
        self,
        root: str | Path | None = None,
        annotations: str | Path | None = None,
        image_list: str | Path | None = None,
        image_sizes: str | Path | None = None,
        limit: int | None = None,
        classes: list[ClassSpec] | ClassSpec | None = None,
        subset_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.root = require_dir(root, "imagenet_val", LAYOUT, "EVALCAM_IMAGENET_ROOT")
        self.class_names = imagenet_categories()
        self.errors: dict[str, str] = {}
        self.paths, list_labels = self._find_images(image_list)
        self.records = self._read_annotations(annotations, list_labels)
        # An image list gives labels only: box metrics must refuse rather than count every image a miss.
        self.has_boxes = any(record.objects for record in self.records.values())
        self.boxes_hint = (
            "pass dataset.annotations=PATH (an ILSVRC2012_bbox_val XML folder, a wsolevaluation metadata "
            "folder or LOC_val_solution.csv with boxes) or set $EVALCAM_IMAGENET_ANNOTATIONS"
        )
        if image_sizes is not None:
            for key, size in read_sizes(Path(image_sizes)).items():
                if key in self.records:
                    self.records[key].size = size
        mismatched = [
            k for k, v in list_labels.items() if k in self.records and v not in self.records[k].labels
        ]
        if mismatched:
            log.warning(
                "imagenet_val: %d image(s) whose image-list label disagrees with the annotations, "
                "e.g. %s; the annotations are used",
                len(mismatched),
                mismatched[:3],
            )
        missing = sorted(set(self.paths) - set(self.records))
        if missing:
            log.warning(
                "imagenet_val: %d image(s) have no ground truth and are left out, e.g. %s",
                len(missing),
                missing[:3],
            )
        self.ids = sorted(k for k in self.paths if k in self.records)
        if not self.ids:
            raise DatasetError(
                f"imagenet_val: none of the {len(self.paths)} images under {self.root} has "
                f"ground truth in {annotations}; expected {LAYOUT}"
            )
        self.subset(limit, classes, subset_seed)
        # Only what the kept images need travels to DataLoader workers.
        self.records = {k: self.records[k] for k in self.ids}
        self.paths = {k: self.paths[k] for k in self.ids}
        self.errors = {k: self.errors[k] for k in self.ids if k in self.errors}

    def _find_images(self, image_list: str | Path | None) -> tuple[dict[str, Path], dict[str, int]]:
        listing = Path(image_list) if image_list else None
        if listing is None and not _images_in(self.root) and (self.root / "dataset.txt").is_file():
            listing = self.root / "dataset.txt"
        if listing is not None:
            if not listing.is_file():
                raise DatasetError(f"imagenet_val: image list {listing} not found; expected {LAYOUT}")
            entries = read_image_list(listing)
            paths = {image_key(p.name): p for p, _ in entries}
            labels = {image_key(p.name): lab for p, lab in entries if lab is not None}
            return paths, labels
        files = _images_in(self.root)
        if not files:
            raise DatasetError(f"imagenet_val: no images in {self.root}; expected {LAYOUT}")
        return {image_key(p.name): p for p in files}, {}

    def _read_annotations(self, annotations: str | Path | None, list_labels: dict[str, int]):
        if annotations is None or str(annotations).strip() in {"", "None", "null"}:
            if list_labels:
                log.warning("imagenet_val: no annotations= given; using the image list's labels (no boxes)")
                return {k: ImageRecord(labels={v}) for k, v in list_labels.items()}
            raise DatasetError(
                f"imagenet_val: no annotations given; pass dataset.annotations=PATH or set "
                f"$EVALCAM_IMAGENET_ANNOTATIONS; expected {LAYOUT}"
            )
        source = Path(annotations).expanduser()
        if source.is_file() and source.suffix.lower() == ".csv":
            key = source_key([source], "csv")
            return read_cached(str(source.resolve()), "csv", key).select(self.paths)
        if (source / "localization.txt").is_file() and (source / "class_labels.txt").is_file():
            key = source_key([source / n for n in WSOL_FILES if (source / n).is_file()], "wsol")
            return read_cached(str(source.resolve()), "wsol", key).select(self.paths)
        xml_dir = source / "val" if (source / "val").is_dir() else source
        if xml_dir.is_dir() and any(xml_dir.glob("*.xml")):
            records: dict[str, ImageRecord] = {}
            for key in self.paths:
                xml = xml_dir / f"{key}.xml"
                if xml.is_file():
                    try:
                        records[key] = read_bbox_xml(xml)
                    except (ET.ParseError, ValueError, OSError) as err:
                        # Kept in the list as a skipped image, so the run counts and lists it.
                        self.errors[key] = f"annotation unreadable: {type(err).__name__}: {err}"
                        records[key] = ImageRecord()
            if self.errors:
                log.warning(
                    "imagenet_val: %d annotation file(s) unreadable, e.g. %s",
                    len(self.errors),
                    next(iter(self.errors.values())),
                )
            return records
        raise DatasetError(f"imagenet_val: annotations {source} not recognised; expected {LAYOUT}")

    def labels_for(self, image_id: str) -> list[int]:
        return sorted(self.records[image_id].labels)

    def class_index(self, spec: ClassSpec) -> int:
        """Also accepts WordNet ids (``n01440764``)."""
        if isinstance(spec, str) and spec.strip() in wnid_index():
            return wnid_index()[spec.strip()]
        return super().class_index(spec)

    def load(self, index: int) -> Sample:
        image_id = self.ids[index]
        if image_id in self.errors:
            raise ValueError(self.errors[image_id])
        record = self.records[image_id]
        image, stored = read_image(self.paths[image_id])
        decoded = (int(image.shape[-2]), int(image.shape[-1]))
        # Boxes far beyond a prescaled copy mean its original size is needed, not that boxes are wrong.
        if record.size is None and any(
            len(box) == 4 and (box[2] >= stored[1] or box[3] >= stored[0]) for _, box in record.objects
        ):
            raise ValueError(
                f"boxes of {image_id} exceed its {stored[1]}x{stored[0]} image and its original "
                f"size is unknown; pass image_sizes= (a name,W,H file)"
            )
        original = record.size or stored
        objects, notes = clean_objects([(c, box, False) for c, box in record.objects], original, image_id)
        notes = record.notes + notes
        report(notes, log)
        boxes, difficult = group_boxes(objects)
        boxes = {c: rescale_boxes(b, original, decoded) for c, b in boxes.items()}
        return Sample(
            image=image,
            image_id=image_id,
            labels=sorted(record.labels),
            boxes=boxes,
            difficult=difficult,
            orig_size=original,
            warnings=notes,
        )
