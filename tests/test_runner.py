"""End to end: the main job on the embedded sample set, logged to MLflow, resumable, batch-size free."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import make_config

from evalcam.runner import run


@pytest.fixture(scope="module")
def gradcam_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    config = make_config(tmp, "batch_size=4", "n_examples=3")
    return tmp, config, run(config)


def test_run_logs_params_metrics_and_artifacts_to_mlflow(gradcam_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, config, result = gradcam_run
    assert result.mlflow_run_id
    mlflow.set_tracking_uri(config["tracking_uri"])
    client = MlflowClient()
    mlrun = client.get_run(result.mlflow_run_id)
    assert mlrun.info.run_name == "gradcam·efficientnet_lite0·sample"
    assert client.get_experiment(mlrun.info.experiment_id).name == "sample/efficientnet_lite0"
    assert mlrun.data.params["method.name"] == "gradcam"
    assert mlrun.data.params["metrics.weak_loc.threshold"] == "0.15"
    assert mlrun.data.tags["method_family"] == "gradient-cam"
    metrics = mlrun.data.metrics
    for key in ("top1_loc_error", "top5_loc_error", "top1_cls_error", "top5_cls_error"):
        assert 0.0 <= metrics[f"weak_loc/{key}"] <= 1.0
    n = metrics["weak_loc/images"]
    assert n >= 10
    # Errors are fractions of n images and ordered as the protocol implies.
    assert metrics["weak_loc/top5_loc_error"] <= metrics["weak_loc/top1_loc_error"]
    assert metrics["weak_loc/top1_cls_error"] <= metrics["weak_loc/top1_loc_error"]
    assert math.isclose(metrics["weak_loc/top1_loc_error"] * n, round(metrics["weak_loc/top1_loc_error"] * n))
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"per_image.parquet", "per_image.csv", "config.yaml", "figures"} <= artifacts
    figures = [a.path for a in client.list_artifacts(result.mlflow_run_id, "figures")]
    assert "figures/examples.png" in figures


def test_per_image_table_agrees_with_logged_metrics(gradcam_run):
    _, _, result = gradcam_run
    table = pd.read_parquet(result.run_dir / "per_image.parquet")
    ok = table[table["status"] == "ok"]
    assert len(ok) == result.metrics["weak_loc/images"]
    assert 1 - ok["weak_loc.top1_loc_ok"].mean() == pytest.approx(result.metrics["weak_loc/top1_loc_error"])
    assert 1 - ok["weak_loc.top5_cls_ok"].mean() == pytest.approx(result.metrics["weak_loc/top5_cls_error"])
    assert ok["pred_top5"].map(len).eq(5).all()
    # Grad-CAM localizes most of these simple photos; a broken map pipeline would not.
    assert ok["weak_loc.top1_iou"].max() > 0.7


def test_gradcam_beats_random_baseline(gradcam_run):
    tmp, _, gradcam = gradcam_run
    random = run(make_config(tmp, "method=random", "batch_size=4", "n_examples=0", "mlflow=false"))
    assert gradcam.metrics["weak_loc/top5_loc_error"] < random.metrics["weak_loc/top5_loc_error"]
    # Same model, same images: classification errors are identical whatever the method.
    assert gradcam.metrics["weak_loc/top1_cls_error"] == random.metrics["weak_loc/top1_cls_error"]


def test_results_do_not_depend_on_batch_size(gradcam_run, tmp_path):
    _, _, reference = gradcam_run
    other = run(make_config(tmp_path, "batch_size=3", "n_examples=0", "mlflow=false"))
    for key, value in reference.metrics.items():
        if not key.startswith("run/"):
            assert other.metrics[key] == pytest.approx(value, abs=1e-9), key


def test_interrupted_run_resumes_to_identical_numbers(gradcam_run, tmp_path):
    _, _, reference = gradcam_run
    config = make_config(tmp_path, "batch_size=4", "n_examples=0", "mlflow=false")
    first = run(config)
    parts = sorted((first.run_dir / "per_image").glob("part-*.parquet"))
    assert len(parts) >= 3
    for part in parts[1:]:  # as if killed after the first batch
        part.unlink()
    resumed = run(config)
    # Every image evaluated exactly once (part boundaries may differ: each session times its first image
    # on its own, see evalcam.pacing).
    ids = pd.read_parquet(first.run_dir / "per_image.parquet")["image_id"]
    assert ids.is_unique and len(ids) == resumed.metrics["run/images_evaluated"] == 11
    for key, value in reference.metrics.items():
        if not key.startswith("run/"):
            assert resumed.metrics[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
def test_cli_multirun_sweep(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'cli.db'}"}
    cmd = [
        sys.executable,
        "-m",
        "evalcam",
        "run",
        "-m",
        "method=gradcam,center",
        "dataset.limit=3",
        f"output_dir={tmp_path / 'runs'}",
        "n_examples=1",
        "progress=false",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # Each run prints its numbers, then the sweep prints the methods x metrics table (one header line).
    assert done.stdout.count("weak_loc/top1_loc_error") == 3
    assert "| gradcam (limit=3) |" in done.stdout and "| center (limit=3) |" in done.stdout
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["sample/efficientnet_lite0"])
    assert sorted(runs["tags.mlflow.runName"]) == [
        "center·efficientnet_lite0·sample (limit=3)",
        "gradcam·efficientnet_lite0·sample (limit=3)",
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "method=nope",
            "unknown method 'nope' in method=nope; valid names: ablationcam, attention_rollout, backprop,",
        ),
        ("model.target_layer=head_actt", "candidates"),
        ("device=cuda:7", "CUDA is not available"),
    ],
)
def test_config_mistakes_end_in_one_line(tmp_path, override, message):
    if override.startswith("device") and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    cmd = [sys.executable, "-m", "evalcam", "run", override, f"output_dir={tmp_path}", "mlflow=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_pgc_class_names_select_the_pgc_method_config(tmp_path):
    """`method=pgc/<ClassName>` (the issue's spelling) composes to the pgc config with that class."""
    from evalcam.cli import pgc_override

    assert pgc_override("method=gradcam") == ["method=gradcam"]
    assert pgc_override("method=gradcam,pgc/ScoreCAM") == ["method=gradcam,pgc/ScoreCAM"]  # sweeps: as is
    overrides = pgc_override("method=pgc/ScoreCAM")
    assert overrides == ["method=pgc", "method.name=pgc/ScoreCAM"]
    config = make_config(tmp_path, *overrides)
    assert config["method"]["name"] == "pgc/ScoreCAM"
