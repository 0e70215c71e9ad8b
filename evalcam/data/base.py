"""Dataset protocol shared by every evalcam dataset, plus the helpers the loaders share (image decoding,
box rescaling, deterministic subsets)."""

from __future__ import annotations

import difflib
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evalcam.data.types import Sample, SkippedImage

log = logging.getLogger(__name__)

ClassSpec = int | str

#: Images with more pixels are decoded at a reduced size (boxes follow; see :func:`read_image`). No image
#: of ILSVRC2012 val (largest 18.2 Mpx), VOC or COCO comes near it; a 10k x 10k scan would otherwise cost
#: gigabytes per map once metrics upsample maps to the image.
MAX_PIXELS = 25_000_000

Box = Sequence[float]


class ImageReadError(OSError):
    """An image file that cannot be decoded (empty, truncated, not an image, a decompression bomb)."""


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
    #: whether samples carry segmentation masks (metrics that need masks check it before a run starts)
    has_masks: bool = False
    #: whether samples carry boxes (box and region metrics check it before a run starts)
    has_boxes: bool = True
    #: how to get boxes when ``has_boxes`` is False: the config keys to set
    boxes_hint: str = ""

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


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode an image file into uint8 RGB ``[3, H, W]`` (see :func:`read_image`)."""
    return read_image(path, max_pixels)[0]


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image file into uint8 RGB ``[3, H, W]``, whatever its stored mode; also return the stored
    ``(H, W)``, which differs from the decoded size only for images above ``max_pixels``.

    PIL detects the format from the bytes (a PNG saved as ``.JPEG`` decodes), converts grayscale, palette
    and CMYK (including Adobe's inverted CMYK JPEGs) to RGB; 16-bit grayscale is scaled to 8 bits rather
    than clipped. Empty, truncated or non-image files, and decompression bombs (over twice PIL's
    ``MAX_IMAGE_PIXELS``), raise :class:`ImageReadError`, which :class:`EvalDataset` turns into a skipped
    image. An image above ``max_pixels`` is shrunk while decoding to at most ``max_pixels`` (same aspect);
    loaders rescale its boxes from the stored size. EXIF orientation is deliberately not applied: VOC,
    COCO and ILSVRC annotations refer to the stored pixel grid.
    """
    try:
        with warnings.catch_warnings():
            # Sizes between PIL's bomb warning and its error are handled by max_pixels below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                stored = (int(img.height), int(img.width))
                if stored[0] * stored[1] > max_pixels:
                    scale = math.sqrt(max_pixels / (stored[0] * stored[1]))
                    target = (max(1, int(stored[1] * scale)), max(1, int(stored[0] * scale)))
                    img.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, cheaply
                    img.load()  # decode now, so truncation raises here rather than later
                    rgb = _to_rgb(img).resize(target, Image.Resampling.BOX)
                else:
                    img.load()
                    rgb = _to_rgb(img)
    except OSError as err:
        raise ImageReadError(f"{Path(path).name}: {err}") from err
    except (Image.DecompressionBombError, SyntaxError, EOFError, ValueError) as err:
        # PIL plugins signal some corrupt files with these instead of OSError.
        raise ImageReadError(f"{Path(path).name}: {type(err).__name__}: {err}") from err
    return uint8_rgb(np.asarray(rgb)), stored


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # PIL's own conversion clips 16-bit values at 255 (a white image); scale the range instead.
        wide = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


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


def clean_objects(
    objects: Sequence[tuple[int, Box, bool]], size: tuple[int, int], where: str
) -> tuple[list[tuple[int, list[float], bool]], list[str]]:
    """Check ``(class, box, difficult)`` objects against an image of ``size`` = (H, W), in its pixels.

    Rules (each fix is reported in the returned warnings, one line per object, naming ``where``):

    - a box with a missing or non-finite coordinate, or inverted (``x1 < x0`` or ``y1 < y0``), is dropped;
    - a box wholly outside the image is dropped;
    - a box partly outside the image is clipped to it.

    Inclusive corners mean ``x0 == x1`` is a one-pixel-wide box, not an empty one. A dropped box does not
    drop its class from the image's labels (the annotator saw the object; only its box is unusable), so
    such a class counts for classification but has no box to localize.
    """
    height, width = size
    kept, notes = [], []
    for cls, box, difficult in objects:
        coords = [float(v) for v in box]
        shown = "[" + ", ".join(f"{v:g}" for v in coords) + "]"
        if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
            notes.append(f"{where}: class {cls} box {shown} has missing or non-numeric coordinates; dropped")
            continue
        x0, y0, x1, y1 = coords
        if x1 < x0 or y1 < y0:
            notes.append(f"{where}: class {cls} box {shown} is inverted (x1 < x0 or y1 < y0); dropped")
            continue
        if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
            notes.append(f"{where}: class {cls} box {shown} lies outside the {width}x{height} image; dropped")
            continue
        clipped = [min(max(x0, 0.0), width - 1), min(max(y0, 0.0), height - 1)]
        clipped += [min(max(x1, 0.0), width - 1), min(max(y1, 0.0), height - 1)]
        if clipped != coords:
            notes.append(f"{where}: class {cls} box {shown} exceeds the {width}x{height} image; clipped")
        kept.append((int(cls), clipped, bool(difficult)))
    return kept, notes


def report(notes: Sequence[str], logger: logging.Logger = log) -> None:
    """Log each annotation problem on its own line (the runner also stores them per image)."""
    for note in notes:
        logger.warning("annotation: %s", note)


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


def require_dir(path: str | Path | None, what: str, layout: str, env: str = "") -> Path:
    """``path`` as a directory, or a one-line :class:`DatasetError` saying what layout was expected and
    which key (``dataset.root=``) or environment variable (``env``) gives it."""
    if path is None or str(path).strip() in {"", "None", "null"}:
        where = f"dataset.root=PATH or set ${env}" if env else "dataset.root=PATH"
        raise DatasetError(f"{what}: no root given; pass {where}; expected {layout}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DatasetError(f"{what}: root {p} is not a directory; expected {layout}")
    return p
