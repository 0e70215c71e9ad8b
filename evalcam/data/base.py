"""Dataset protocol shared by every evalcam dataset, plus the helpers the loaders share (image decoding,
box rescaling, deterministic subsets)."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evalcam.data.types import Sample, SkippedImage

log = logging.getLogger(__name__)

ClassSpec = int | str


class DatasetError(ValueError):
    """A dataset cannot be opened (missing root, malformed annotations). The message says how to fix it."""


class EvalDataset(Dataset):
    """Indexable collection of :class:`Sample`.

    Subclasses fill ``self.ids`` (stable image ids, in evaluation order) and implement :meth:`load`.
    ``__getitem__`` turns an unreadable image into a :class:`SkippedImage` so a run skips, counts and
    reports it instead of crashing. Subclasses that know labels without decoding images override
    :meth:`labels_for`, which makes ``subset(classes=...)`` cheap.
    """

    name: str = "dataset"
    label_space: str = "imagenet"

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample | SkippedImage:
        try:
            return self.load(index)
        except (OSError, RuntimeError, ValueError) as err:
            # Corrupt or unreadable images are skipped by the runner, never fatal.
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            log.warning("skipping unreadable image %s: %s", self.ids[index], reason)
            return SkippedImage(self.ids[index], reason)

    def labels_for(self, image_id: str) -> list[int]:
        """Classes present in image ``image_id``. The default decodes the image; loaders override it."""
        sample = self[self.ids.index(image_id)]
        return list(sample.labels) if isinstance(sample, Sample) else []

    def class_index(self, spec: ClassSpec) -> int:
        """Index of a class given as an index or a name (case-insensitive; ImageNet also takes wnids).

        A name listed twice (ImageNet's "crane" and "maillot") gives its first index; pass the index or
        the wnid for the other one.
        """
        if isinstance(spec, int | np.integer) or (isinstance(spec, str) and spec.strip().isdigit()):
            index = int(spec)
            if not 0 <= index < max(len(self.class_names), 1):
                raise DatasetError(
                    f"class index {index} out of range for {self.name} (0..{len(self.class_names) - 1})"
                )
            return index
        lowered = [n.lower() for n in self.class_names]
        key = str(spec).strip().lower()
        if key in lowered:
            return lowered.index(key)
        close = difflib.get_close_matches(key, lowered, n=5, cutoff=0.6)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise DatasetError(f"unknown class {spec!r} for {self.name}{hint}")

    def subset(
        self,
        limit: int | None = None,
        classes: Sequence[ClassSpec] | ClassSpec | None = None,
        subset_seed: int | None = None,
    ) -> EvalDataset:
        """Restrict the evaluation list in place (and return ``self``).

        ``classes`` keeps the images that contain at least one of the given classes (indices or names).
        ``limit`` then keeps ``limit`` images: the first ones in evaluation order, or, with ``subset_seed``,
        a seeded random draw (numpy PCG64), reported back in evaluation order so runs stay comparable.
        """
        if classes is not None and not (isinstance(classes, Sequence) and not isinstance(classes, str)):
            classes = [classes]
        if classes:
            wanted = {self.class_index(c) for c in classes}
            self.ids = [i for i in self.ids if wanted.intersection(self.labels_for(i))]
        if limit is not None and int(limit) < len(self.ids):
            count = max(int(limit), 0)
            if subset_seed is None:
                self.ids = self.ids[:count]
            else:
                keep = np.random.default_rng(int(subset_seed)).permutation(len(self.ids))[:count]
                self.ids = [self.ids[i] for i in sorted(keep.tolist())]
        return self


def uint8_rgb(array) -> torch.Tensor:
    """HWC / HW numpy array (gray, RGB or RGBA) -> uint8 ``[3, H, W]`` tensor."""
    t = torch.from_numpy(np.array(array, copy=True))
    if t.ndim == 2:
        t = t[..., None].expand(*t.shape, 3)
    t = t[..., :3]
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t.permute(2, 0, 1).contiguous().to(torch.uint8)


def read_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file into uint8 RGB ``[3, H, W]``, whatever its stored mode.

    PIL detects the format from the bytes (a PNG saved as ``.JPEG`` decodes), converts grayscale, palette
    and CMYK (including Adobe's inverted CMYK JPEGs) to RGB, and raises ``OSError`` on empty or truncated
    files, which :class:`EvalDataset` turns into a skipped image. EXIF orientation is deliberately not
    applied: VOC, COCO and ILSVRC annotations refer to the stored pixel grid.
    """
    with Image.open(path) as img:
        img.load()  # decode now, so truncation raises here rather than later
        rgb = img.convert("RGB")
    return uint8_rgb(np.asarray(rgb))


def rescale_boxes(boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """Map inclusive pixel boxes ``[N, 4]`` annotated on an image of size ``from_hw`` onto a plain
    (aspect-squashing) resize of it to ``to_hw``.

    Pixel ``i`` spans ``[i, i + 1)``, so a box spans ``[x0, x1 + 1)``; both edges scale by
    ``to_W / from_W`` (and ``to_H / from_H``) and the right/bottom edge goes back to an inclusive index.
    A box covering the whole image keeps covering the whole resized image. Results are clamped to it.
    """
    if tuple(from_hw) == tuple(to_hw) or boxes.numel() == 0:
        return boxes
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    b = boxes.to(torch.float32)
    out = torch.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 2] + 1) * sx - 1, (b[:, 3] + 1) * sy - 1], dim=1)
    out[:, 0::2] = out[:, 0::2].clamp(0, to_hw[1] - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, to_hw[0] - 1)
    # A sub-pixel box (one source pixel shrunk) would otherwise end before it starts.
    out[:, 2] = torch.maximum(out[:, 2], out[:, 0])
    out[:, 3] = torch.maximum(out[:, 3], out[:, 1])
    return out


def group_boxes(
    objects: Sequence[tuple[int, Sequence[float], bool]],
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``(class, box, difficult)`` triples -> the per-class ``boxes`` / ``difficult`` dicts of a Sample."""
    boxes: dict[int, list[list[float]]] = {}
    flags: dict[int, list[bool]] = {}
    for cls, box, difficult in objects:
        boxes.setdefault(int(cls), []).append([float(v) for v in box])
        flags.setdefault(int(cls), []).append(bool(difficult))
    return (
        {c: torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for c, b in sorted(boxes.items())},
        {c: torch.tensor(f, dtype=torch.bool) for c, f in sorted(flags.items())},
    )


def require_dir(path: str | Path | None, what: str, layout: str) -> Path:
    """``path`` as a directory, or a one-line :class:`DatasetError` saying what layout was expected."""
    if path is None or str(path).strip() in {"", "None", "null"}:
        raise DatasetError(
            f"{what}: no root given (set root= or the environment variable); expected {layout}"
        )
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DatasetError(f"{what}: root {p} is not a directory; expected {layout}")
    return p
