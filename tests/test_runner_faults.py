"""Faults during a run (evalcam.runner; a full disk is in test_results.py): Ctrl-C, a failing MLflow, bad
files in the dataset, and configuration mistakes. Each ends in one clear line, loses nothing already
computed, and a rerun of the same command finishes with the numbers of an uninterrupted run."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from conftest import IMAGES, OVERRIDES, assert_same_numbers, cli_pausing_after_batch, parts
from conftest import small_run_config as config_for
from PIL import Image

from evalcam import runner
from evalcam.data.imagenet import imagenet_wnids
from evalcam.metrics import METRICS, Metric
from evalcam.requirements import Needs
from evalcam.runner import run


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_resumes_to_identical_numbers(tmp_path, small_reference):
    output = tmp_path / "runs"
    args = ["run", *OVERRIDES, f"dataset.limit={IMAGES}", f"output_dir={output}"]
    cmd = cli_pausing_after_batch(args, batches=1, seconds=20)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    # Hydra's job logging writes to stdout: read both streams.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if list(output.glob("*/per_image/part-*.parquet")):
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.01)
        stderr, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, stderr[-2000:]
    assert "interrupted:" in stderr and "rerun the same command to resume" in stderr, stderr[-2000:]
    run_dir = runner.run_directory(config_for(output))
    done = parts(run_dir)
    assert 1 <= len(done) < IMAGES and not (run_dir / "summary.json").exists()
    resumed = run(config_for(output))
    assert len(parts(run_dir)) == IMAGES
    assert_same_numbers(resumed.metrics, small_reference)


def test_any_mlflow_failure_keeps_results_and_says_how_to_log_later(tmp_path, monkeypatch, caplog):
    def broken(run_dir, uri=None):
        raise RuntimeError("INTERNAL_ERROR: database is locked\n(details on a second line)")

    monkeypatch.setattr(runner, "log_run_dir", broken)
    with caplog.at_level(logging.ERROR):
        result = run(config_for(tmp_path / "runs", "mlflow=true"))
    assert result.mlflow_run_id is None and (result.run_dir / "summary.json").exists()
    (line,) = [r.getMessage() for r in caplog.records if "python -m evalcam log" in r.getMessage()]
    assert "database is locked" in line and "\n" not in line


def test_bad_files_are_skipped_counted_listed_and_fixed_boxes_reported(tmp_path):
    folder, xml = tmp_path / "val", tmp_path / "bbox"
    folder.mkdir()
    xml.mkdir()
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(good, format="JPEG")
    files = {
        1: good.getvalue(),
        2: good.getvalue()[: len(good.getvalue()) // 2],  # truncated
        3: b"",  # zero bytes
    }
    for number, data in files.items():
        (folder / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(data)
    Image.new("CMYK", (64, 48), (0, 200, 200, 0)).save(folder / "ILSVRC2012_val_00000004.JPEG")
    Image.new("L", (64, 48), 90).save(folder / "ILSVRC2012_val_00000005.JPEG", format="PNG")  # PNG bytes
    for number in range(1, 6):
        (xml / f"ILSVRC2012_val_{number:08d}.xml").write_text(
            f"<annotation><size><width>64</width><height>48</height></size><object><name>{imagenet_wnids()[3]}"
            "</name><bndbox><xmin>10</xmin><ymin>5</ymin><xmax>80</xmax><ymax>40</ymax></bndbox></object>"
            "</annotation>"
        )
    result = run(
        config_for(
            tmp_path / "runs",
            "dataset=imagenet_val",
            f"dataset.root={folder}",
            f"dataset.annotations={xml}",
            "dataset.limit=null",
            "batch_size=2",
        )
    )
    assert result.metrics["run/images_skipped"] == 2 and result.metrics["run/images_evaluated"] == 3
    assert result.metrics["weak_loc/images"] == 3
    assert result.metrics["run/annotation_warnings"] == 3  # one clipped box per readable image
    skipped = pd.read_csv(result.run_dir / "skipped.csv")
    assert sorted(skipped["image_id"]) == ["ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"]
    assert skipped["error"].str.len().gt(0).all()
    table = pd.read_parquet(result.run_dir / "per_image.parquet").set_index("image_id")
    assert "clipped" in table.loc["ILSVRC2012_val_00000001", "warnings"][0]
    # Image 1 shares its batch with the unreadable image 2, listed first: its results are all there.
    assert len(table.loc["ILSVRC2012_val_00000001", "pred_top5"]) == 5
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["metrics"]["run/images_skipped"] == 2


class NeedsMasks(Metric):
    name = "mask_iou"
    needs = Needs(masks=True)

    def update(self, batch):  # never reached: the run stops before the first batch
        raise AssertionError

    def compute(self) -> dict[str, float]:
        return {}


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("+metrics.mask_iou={}", "coco2014, coco2017"),
        ("+dataset.classes=[5000]", "0..999"),
        ("+metrics.pointing.num_classes=10", "num_classes=1000"),
        ("+metrics.nope={}", "available: "),
        ("model.target_layer=blocks.99", "candidates"),
    ],
)
def test_config_mistakes_stop_before_any_work_with_one_line(tmp_path, monkeypatch, override, valid):
    monkeypatch.setitem(METRICS, "mask_iou", NeedsMasks)
    config = config_for(tmp_path / "runs", override)
    with pytest.raises((ValueError, KeyError)) as err:
        run(config)
    assert valid in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "runs").glob("*/per_image/part-*"))
