"""Shared fixtures. Real data lives in ../shared/data (never in this repo); tests that need it skip
with a reason when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EVALCAM_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def cli_pausing_after_batch(args: list[str], batches: int, seconds: float) -> list[str]:
    """Command running ``python -m evalcam ARGS`` in a child that sleeps once, ``seconds`` long, right after
    its ``batches``-th batch is safely written: a signal sent then lands mid-run however loaded the machine
    is (on a busy CI host a short run could finish before the signal arrives).

    The child restores the SIGINT handler a terminal gives: a shell that starts jobs in the background
    (``nohup ... &``) hands them SIGINT ignored, and Python keeps an ignored SIGINT.
    """
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from evalcam import results\n"
        "write = results.ResultStore.append\n"
        "written = []\n"
        "def append(self, *args, **kwargs):\n"
        "    path = write(self, *args, **kwargs)\n"
        "    written.append(path)\n"
        # Only once: what the runner writes while it stops must not wait.
        f"    if len(written) == {int(batches)}:\n"
        f"        time.sleep({float(seconds)})\n"
        "    return path\n"
        "results.ResultStore.append = append\n"
        "from evalcam.cli import main\n"
        f"main({list(args)!r})\n"
    )
    return [sys.executable, "-c", script]


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
