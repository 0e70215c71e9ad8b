"""Parsed annotation files kept on disk as flat arrays, so a second run skips the parse.

ILSVRC's 50k-image metadata takes seconds to parse and every point of a sweep used to pay it. The parse is
stored once as a few NumPy arrays (image keys, labels, boxes, sizes, with offsets) in
``$EVALCAM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/evalcam`` or ``~/.cache/evalcam``; ``off`` disables it),
keyed by the source files' resolved paths, sizes and modification times: an edited, replaced or touched
file is parsed again. Loading the arrays and building records for the images a dataset holds takes a
fraction of a second; records are built only for those images.

A cache that cannot be written (read-only home, full disk) or read (truncated file) is ignored with a
debug line: the parse is the fallback, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evalcam.data.imagenet import ImageRecord

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout below changes: old files are then never read


def cache_dir() -> Path | None:
    value = os.environ.get("EVALCAM_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in {"", "off", "none", "0"} else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evalcam"


def source_key(files: Iterable[Path], kind: str) -> str:
    """Identity of the parse of ``files``: resolved path, size and mtime of each, the kind and FORMAT."""
    parts = [kind, str(FORMAT)]
    for path in files:
        stat = path.stat()
        parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


@dataclass
class RecordTable:
    """Every image's :class:`ImageRecord` as flat arrays; :meth:`select` rebuilds the records of some."""

    keys: np.ndarray  # [N] str
    label_start: np.ndarray  # [N + 1] offsets into labels
    labels: np.ndarray  # [L] int32
    object_start: np.ndarray  # [N + 1] offsets into object_classes / boxes
    object_classes: np.ndarray  # [M] int32
    boxes: np.ndarray  # [M, 4] float64 (NaN kept: the loader drops such boxes with a warning)
    sizes: np.ndarray  # [N, 2] int64 (H, W), -1 when unknown
    notes: dict[str, list[str]]  # the few images with annotation problems

    @classmethod
    def from_records(cls, records: dict[str, ImageRecord]) -> RecordTable:
        keys = list(records)
        labels = [sorted(records[k].labels) for k in keys]
        objects = [records[k].objects for k in keys]
        boxes = [box for objs in objects for _, box in objs]
        return cls(
            keys=np.array(keys, dtype=str),
            label_start=np.cumsum([0, *map(len, labels)], dtype=np.int64),
            labels=np.array([c for cs in labels for c in cs], dtype=np.int32),
            object_start=np.cumsum([0, *map(len, objects)], dtype=np.int64),
            object_classes=np.array([c for objs in objects for c, _ in objs], dtype=np.int32),
            boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
            sizes=np.array([records[k].size or (-1, -1) for k in keys], dtype=np.int64).reshape(-1, 2),
            notes={k: list(records[k].notes) for k in keys if records[k].notes},
        )

    def select(self, wanted: Iterable[str]) -> dict[str, ImageRecord]:
        """Fresh records of the ``wanted`` keys present in the table (callers may alter them)."""
        from evalcam.data.imagenet import ImageRecord

        index = {key: i for i, key in enumerate(self.keys.tolist())}
        out: dict[str, ImageRecord] = {}
        for key in wanted:
            i = index.get(key)
            if i is None:
                continue
            lo, hi = int(self.object_start[i]), int(self.object_start[i + 1])
            size = tuple(int(v) for v in self.sizes[i])
            out[key] = ImageRecord(
                labels={int(c) for c in self.labels[self.label_start[i] : self.label_start[i + 1]]},
                objects=[
                    (int(c), [float(v) for v in box])
                    for c, box in zip(self.object_classes[lo:hi], self.boxes[lo:hi], strict=True)
                ],
                size=size if size[0] >= 0 else None,  # type: ignore[arg-type]
                notes=list(self.notes.get(key, [])),
            )
        return out

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                keys=self.keys,
                label_start=self.label_start,
                labels=self.labels,
                object_start=self.object_start,
                object_classes=self.object_classes,
                boxes=self.boxes,
                sizes=self.sizes,
                notes=np.array(json.dumps(self.notes)),
            )
        os.replace(tmp, path)  # concurrent runs of a sweep may write the same entry: last one wins

    @classmethod
    def load(cls, path: Path) -> RecordTable:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        notes = json.loads(str(arrays.pop("notes")))
        return cls(notes=notes, **arrays)


def cached_table(files: list[Path], kind: str, parse: Callable[[], dict[str, ImageRecord]]) -> RecordTable:
    """The parse of ``files`` from the disk cache, or ``parse()`` stored there for the next run."""
    folder = cache_dir()
    if folder is None:
        return RecordTable.from_records(parse())
    path = folder / f"annotations-{kind}-{source_key(files, kind)}.npz"
    if path.is_file():
        try:
            return RecordTable.load(path)
        except Exception as err:  # any damage (truncated zip, missing array): the parse is the fallback
            log.debug("annotation cache %s unreadable (%s); parsing again", path, err)
    table = RecordTable.from_records(parse())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        table.save(path)
    except OSError as err:
        log.debug("annotation cache %s not written (%s)", path, err)
    return table
