"""Shared fixtures. Real data lives in ../shared/data (never in this repo); tests that need it skip
with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EVALCAM_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data subsets not found at {SHARED_DATA} (set EVALCAM_SHARED_DATA)")
    return SHARED_DATA


def shared_subdir(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present: the real-data subset is needed for this test")
    return path


@pytest.fixture(scope="session")
def lite0():
    from evalcam.models import load_model

    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    """A few real packaged photos as uint8 [3,H,W] (independent of the annotation file)."""
    from evalcam.data.base import uint8_rgb
    from evalcam.data.sample import load_source

    sources = {
        "chelsea": "skimage:chelsea",
        "coffee": "skimage:coffee",
        "grace_hopper": "matplotlib:grace_hopper.jpg",
        "china": "sklearn:china.jpg",
    }
    return {name: uint8_rgb(load_source(src)) for name, src in sources.items()}
