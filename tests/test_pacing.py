"""Slow set-ups are bearable (evalcam.pacing): an estimate from a short measurement, image-by-image saving
with the same numbers as whole batches, Ctrl-C inside a batch keeping the finished images, and
examples.png drawn from the maps the run kept instead of explaining again."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_numbers, cli_pausing_after_batch, compose_config, parts

from evalcam import runner
from evalcam.pacing import EXAMPLE_MAPS, duration, load_example_maps
from evalcam.runner import run

IMAGES = 3
# RISE with 128 masks: ~128 forward passes per image, far above the slow threshold set here (5).
OVERRIDES = (
    "method=rise",
    "method.params.num_masks=128",
    "dataset=sample",
    f"dataset.limit={IMAGES}",
    "batch_size=3",
    "metrics=[weak_loc]",
    "device=cpu",
    "mlflow=false",
    "progress=false",
)


def config_for(output: Path, *overrides: str, slow_ratio: float = 5.0, base: tuple = OVERRIDES) -> dict:
    config = compose_config(*base, f"output_dir={output}", *overrides)
    config["slow_ratio"] = slow_ratio
    return config


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    """The whole batch at once: no run is slow under a threshold of 1e9 forwards per image."""
    config = config_for(tmp_path_factory.mktemp("batched") / "runs", "n_examples=0", slow_ratio=1e9)
    result = run(config)
    return config, result


def test_duration_text():
    assert [duration(s) for s in (0.25, 12.4, 250, 3 * 3600 + 300)] == ["0.2s", "12s", "4m10s", "3h05m"]


def test_slow_run_is_announced_saved_per_image_and_gives_the_batch_numbers(tmp_path, batched, caplog):
    _, batch_result = batched
    assert len(parts(batch_result.run_dir)) == 2  # the first image alone (timed), then the batch's rest
    config = config_for(tmp_path / "runs", "n_examples=2")
    with caplog.at_level(logging.INFO, logger="evalcam.pacing"):
        result = run(config)
    (line,) = [r.getMessage() for r in caplog.records if "slow set-up" in r.getMessage()]
    assert f"forward passes per image x {IMAGES} image(s)" in line and "s/image measured" in line
    assert "Ctrl-C keeps every finished image" in line
    assert len(parts(result.run_dir)) == IMAGES  # image by image
    assert_same_numbers(result.metrics, batch_result.metrics)

    kept = load_example_maps(result.run_dir / EXAMPLE_MAPS)
    assert [e["image_id"] for e in kept] == list(result_ids(result.run_dir))[:2]
    assert all(e["map"].shape == (224, 224) for e in kept)  # RISE maps are at input resolution
    assert (result.run_dir / "examples.png").is_file()


def result_ids(run_dir: Path) -> list[str]:
    import pandas as pd

    return pd.read_parquet(run_dir / "per_image.parquet")["image_id"].tolist()


def test_examples_are_drawn_from_the_kept_maps_without_explaining(tmp_path, monkeypatch):
    gradcam = ("method=gradcam", *OVERRIDES[2:])
    config = config_for(tmp_path / "runs", "n_examples=2", slow_ratio=1e9, base=gradcam)
    first = run(config)
    kept = load_example_maps(first.run_dir / EXAMPLE_MAPS)
    assert len(kept) == 2 and kept[0]["map"].shape == (7, 7)  # Lite0's feature resolution
    (first.run_dir / "examples.png").unlink()

    def no_explaining(self, *args, **kwargs):
        raise AssertionError("examples.png must not explain images again")

    from evalcam.methods.base import Explainer

    monkeypatch.setattr(Explainer, "explain", no_explaining)
    again = run(config)  # every image is done: only the summary and the figure are written again
    assert (again.run_dir / "examples.png").is_file()
    assert torch.equal(load_example_maps(again.run_dir / EXAMPLE_MAPS)[1]["map"], kept[1]["map"])


def test_examples_reuse_the_images_the_run_decoded(tmp_path, monkeypatch):
    from PIL import Image

    from evalcam.data.base import EvalDataset

    decoded = []
    read = EvalDataset.__getitem__

    def counted(self, index):
        decoded.append(self.ids[index])
        return read(self, index)

    monkeypatch.setattr(EvalDataset, "__getitem__", counted)
    gradcam = ("method=gradcam", *OVERRIDES[2:])
    config = config_for(tmp_path / "runs", "n_examples=2", slow_ratio=1e9, base=gradcam)
    first = run(config)
    assert sorted(decoded) == sorted(result_ids(first.run_dir))  # each image once: none for the figure
    drawn = Image.open(first.run_dir / "examples.png")
    assert drawn.mode == "RGB"
    pixels = np.asarray(drawn)
    # A rerun of the finished run has decoded nothing: its figure reads the two images from the dataset
    # and is the same picture.
    (first.run_dir / "examples.png").unlink()
    decoded.clear()
    again = run(config)
    assert len(decoded) == 2
    assert np.array_equal(np.asarray(Image.open(again.run_dir / "examples.png")), pixels)


@pytest.mark.slow
def test_ctrl_c_inside_a_batch_keeps_the_finished_images(tmp_path, batched):
    _, batch_result = batched
    output = tmp_path / "runs"
    args = ["run", *OVERRIDES, "n_examples=0", f"output_dir={output}", "slow_ratio=5"]
    # Paused after the 2nd part: two of the batch's three images are saved, the third is not started.
    cmd = cli_pausing_after_batch(args, batches=2, seconds=30)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(output.glob("*/per_image/part-*.parquet"))) >= 2:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.01)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-2000:]
    assert f"interrupted: 2 of {IMAGES} images are saved" in out, out[-2000:]
    config = config_for(output, "n_examples=0")
    run_dir = runner.run_directory(config)
    assert len(parts(run_dir)) == 2 and not (run_dir / "summary.json").exists()
    resumed = run(config)
    assert len(parts(run_dir)) == IMAGES
    assert_same_numbers(resumed.metrics, batch_result.metrics)


# --- batch-dependent metrics (Focus, sufficiency): batches are never split ------------------------------

# Sample images 1-3 and 4-6: in each batch of 3 every image has two others without its label, so every
# image gets a Focus mosaic, and sufficiency compares it with the two others of its batch.
DEPENDENT = (
    "method=gradcam",
    "dataset=sample",
    "dataset.limit=6",
    "batch_size=3",
    "metrics=[focus,sufficiency]",
    "device=cpu",
    "mlflow=false",
    "progress=false",
    "n_examples=0",
)


def records(run_dir: Path):
    """The per-image Focus and sufficiency columns, by image id."""
    import pandas as pd

    table = pd.read_parquet(run_dir / "per_image.parquet")
    columns = [c for c in table.columns if c.startswith(("focus.", "sufficiency."))]
    return table.set_index("image_id")[columns].sort_index()


@pytest.fixture(scope="module")
def unpaced(tmp_path_factory):
    """Focus and sufficiency on whole batches, never slow."""
    return run(config_for(tmp_path_factory.mktemp("unpaced") / "runs", slow_ratio=1e9, base=DEPENDENT))


def test_a_paced_run_gives_batch_dependent_metrics_the_unpaced_records(tmp_path, unpaced, caplog):
    from pandas.testing import assert_frame_equal

    reference = records(unpaced.run_dir)
    assert len(parts(unpaced.run_dir)) == 2  # one part per batch: the first image is not timed alone
    assert reference["focus.focus"].notna().all() and len(reference) == 6
    with caplog.at_level(logging.INFO, logger="evalcam.pacing"):
        paced = run(config_for(tmp_path / "runs", slow_ratio=1e-9, base=DEPENDENT))  # every run is slow
    lines = [r.getMessage() for r in caplog.records]
    (whole,) = [line for line in lines if "compare(s) the images of a batch" in line]
    assert "focus, sufficiency" in whole and "batches of 3 are evaluated and saved whole" in whole
    (slow,) = [line for line in lines if "slow set-up" in line]
    assert "measured over the first batch" in slow and "Batches are saved one at a time" in slow
    assert len(parts(paced.run_dir)) == 2  # batch by batch, not image by image
    assert_frame_equal(records(paced.run_dir), reference)
    assert_same_numbers(paced.metrics, unpaced.metrics)


def test_an_interrupted_batch_dependent_run_resumes_to_the_uninterrupted_records(
    tmp_path, unpaced, monkeypatch
):
    from pandas.testing import assert_frame_equal

    from evalcam.results import ResultStore

    write = ResultStore.append

    def interrupted(self, *args, **kwargs):
        write(self, *args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after the first saved part

    config = config_for(tmp_path / "runs", slow_ratio=1e-9, base=DEPENDENT)
    monkeypatch.setattr(ResultStore, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.undo()
    run_dir = runner.run_directory(config)
    (first,) = parts(run_dir)  # the whole first batch, not its first image alone
    assert len(pd_ids(first)) == 3
    resumed = run(config)
    assert len(parts(run_dir)) == 2
    assert_frame_equal(records(resumed.run_dir), records(unpaced.run_dir))
    assert_same_numbers(resumed.metrics, unpaced.metrics)


def test_a_folder_saved_in_other_batches_is_refused_for_batch_dependent_metrics(tmp_path, monkeypatch):
    from evalcam.results import ResultStore

    write = ResultStore.append

    def interrupted(self, *args, **kwargs):
        write(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config_for(tmp_path / "runs", "batch_size=2", slow_ratio=1e9, base=DEPENDENT))
    monkeypatch.undo()
    # batch_size does not name the folder: the same command with batch_size=3 would mix two batchings
    with pytest.raises(
        ValueError, match=r"holds part part-000000-000.parquet of 2 image\(s\) that is not one"
    ):
        run(config_for(tmp_path / "runs", slow_ratio=1e9, base=DEPENDENT))


def pd_ids(part: Path) -> list[str]:
    import pandas as pd

    return pd.read_parquet(part)["image_id"].tolist()


def test_batch_plans_keep_dependent_batches_fixed_across_resumes_and_processes():
    from evalcam.batching import plan_batches

    ids = [f"i{k}" for k in range(7)]
    # Independent metrics: whatever is left, in batches (torchrun: every world-th image).
    assert plan_batches(ids, {"i0"}, 3) == [[1, 2, 3], [4, 5, 6]]
    assert plan_batches(ids, set(), 3, rank=1, world=2) == [[1, 3, 5]]
    # Dependent: the dataset's own batches, done ones dropped, whole batches per process.
    assert plan_batches(ids, {"i0", "i1", "i2"}, 3, dependent=["focus"]) == [[3, 4, 5], [6]]
    assert plan_batches(ids, set(), 3, rank=1, world=2, dependent=["focus"]) == [[3, 4, 5]]
    with pytest.raises(ValueError, match="partly done; focus need"):
        plan_batches(ids, {"i0"}, 3, dependent=["focus"])
