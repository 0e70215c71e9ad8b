"""Dataset registry: ``build_dataset("sample", limit=4)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evalcam.data.base import DatasetError, EvalDataset
from evalcam.data.types import Sample, SkippedImage, collate_samples

DatasetBuilder = Callable[..., EvalDataset]
DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def wrap(fn: DatasetBuilder) -> DatasetBuilder:
        DATASETS[name] = fn
        return fn

    return wrap


@register_dataset("sample")
def _sample(**kw: Any) -> EvalDataset:
    from evalcam.data.sample import SampleDataset

    return SampleDataset(**kw)


@register_dataset("imagenet_val")
def _imagenet_val(**kw: Any) -> EvalDataset:
    from evalcam.data.imagenet import ImageNetVal

    return ImageNetVal(**kw)


@register_dataset("voc2007")
def _voc2007(split: str = "test", **kw: Any) -> EvalDataset:
    from evalcam.data.voc import VOCDataset

    return VOCDataset(year="2007", split=split, **kw)


@register_dataset("voc2012")
def _voc2012(split: str = "val", **kw: Any) -> EvalDataset:
    # VOC2012 test annotations were never released; val is the usual evaluation split.
    from evalcam.data.voc import VOCDataset

    return VOCDataset(year="2012", split=split, **kw)


@register_dataset("coco2014")
def _coco2014(split: str = "val", **kw: Any) -> EvalDataset:
    from evalcam.data.coco import COCODataset

    return COCODataset(year="2014", split=split, **kw)


@register_dataset("coco2017")
def _coco2017(split: str = "val", **kw: Any) -> EvalDataset:
    from evalcam.data.coco import COCODataset

    return COCODataset(year="2017", split=split, **kw)


def build_dataset(name: str, **kw: Any) -> EvalDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kw)


__all__ = [
    "DATASETS",
    "DatasetError",
    "EvalDataset",
    "Sample",
    "SkippedImage",
    "build_dataset",
    "collate_samples",
    "register_dataset",
]
