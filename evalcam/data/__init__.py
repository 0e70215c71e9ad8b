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


def build_dataset(name: str, **kw: Any) -> EvalDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kw)


__all__ = ["DATASETS", "DatasetError", "EvalDataset", "Sample", "SkippedImage", "build_dataset", "collate_samples",
           "register_dataset"]
