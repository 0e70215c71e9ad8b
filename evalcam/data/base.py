"""Dataset protocol shared by every evalcam dataset."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from evalcam.data.types import Sample, SkippedImage

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset cannot be opened (missing root, malformed annotations). The message says how to fix it."""


class EvalDataset(Dataset):
    """Indexable collection of :class:`Sample`.

    Subclasses fill ``self.ids`` (stable image ids, in evaluation order) and implement :meth:`load`.
    ``__getitem__`` turns an unreadable image into a :class:`SkippedImage` so a run skips, counts and reports it instead
    of crashing.
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

    def subset(self, limit: int | None = None, classes: list[int] | None = None) -> EvalDataset:
        """Restrict to ``limit`` images (a deterministic prefix of the evaluation order)."""
        if limit is not None:
            self.ids = self.ids[: int(limit)]
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
