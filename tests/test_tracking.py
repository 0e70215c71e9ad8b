"""evalcam.tracking: a finished run folder logged to MLflow in batched calls (re-logging uploads only what
changed), and a run whose tracking server is unreachable keeps its results for ``log_run_dir`` to log later,
once per configuration."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from conftest import make_config
from mlflow.tracking import MlflowClient

from evalcam import tracking
from evalcam.runner import run
from evalcam.tracking import log_run_dir


def test_unreachable_tracking_server_keeps_results_and_can_log_later(tmp_path):
    config = make_config(tmp_path, "n_examples=0", "dataset.limit=2", "tracking_uri=http://127.0.0.1:9")
    result = run(config)
    assert result.mlflow_run_id is None
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["metrics"]["weak_loc/images"] == 2
    later = f"sqlite:///{tmp_path / 'later.db'}"
    run_id = log_run_dir(result.run_dir, later)
    assert run_id
    # Logging the same folder again (or a finished rerun) updates that run: one run per configuration.
    assert log_run_dir(result.run_dir, later) == run_id
    import mlflow

    mlflow.set_tracking_uri(later)
    runs = mlflow.search_runs(experiment_names=["sample/efficientnet_lite0"])
    assert len(runs) == 1 and runs["metrics.weak_loc/images"].iloc[0] == 2


@pytest.fixture
def run_folder(tmp_path):
    folder = tmp_path / "gradcam__net__sample__0123456789"
    folder.mkdir()
    metrics = {f"m{i}/value": i / 7 for i in range(1500)}  # more than one batch of 1000 metrics
    metrics["nan/value"] = float("nan")
    summary = {
        "run_name": "gradcam·net·sample",
        "experiment": "tracking-test",
        "tracking_uri": None,
        "tags": {"method": "gradcam"},
        "params": {f"p{i}": str(i) for i in range(250)},  # three batches of params
        "metrics": metrics,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text("method: {name: gradcam}\n")
    pd.DataFrame({"image_id": ["a", "b"], "status": ["ok", "ok"]}).to_parquet(folder / "per_image.parquet")
    return folder


def test_logging_again_uploads_only_changed_files(run_folder, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    uploads: list[str] = []
    real = mlflow.log_artifact

    def counting(path, artifact_path=None):
        uploads.append(path.rsplit("/", 1)[-1])
        return real(path, artifact_path=artifact_path)

    monkeypatch.setattr(mlflow, "log_artifact", counting)
    run_id = tracking.log_run_dir(run_folder, uri)
    assert sorted(uploads) == ["config.yaml", "per_image.parquet", "summary.json"]
    data = MlflowClient(uri).get_run(run_id).data
    assert len(data.params) == 250 and data.params["p249"] == "249"
    assert len(data.metrics) == 1500 and data.metrics["m1499/value"] == pytest.approx(1499 / 7)
    assert "nan/value" not in data.metrics

    uploads.clear()
    # summary.json gained the MLflow run id after the first upload: only it changed.
    assert tracking.log_run_dir(run_folder, uri) == run_id
    assert uploads == ["summary.json"]
    uploads.clear()
    assert tracking.log_run_dir(run_folder, uri) == run_id
    assert uploads == []
    (run_folder / "config.yaml").write_text("method: {name: gradcam}\nbatch_size: 4\n")
    tracking.log_run_dir(run_folder, uri)
    assert uploads == ["config.yaml"]


def test_a_new_store_gets_every_file_again(run_folder, tmp_path, monkeypatch):
    uploads: list[str] = []
    real = mlflow.log_artifact
    monkeypatch.setattr(
        mlflow, "log_artifact", lambda p, artifact_path=None: (uploads.append(p), real(p, artifact_path))[1]
    )
    tracking.log_run_dir(run_folder, f"sqlite:///{tmp_path / 'first.db'}")
    uploads.clear()
    # Another store holds another MLflow run: the manifest of the first one does not apply.
    tracking.log_run_dir(run_folder, f"sqlite:///{tmp_path / 'second.db'}")
    assert len(uploads) == 3


def _table_of(client, run_id, tmp_path):
    path = client.download_artifacts(run_id, tracking.TABLE_FILE, str(tmp_path))
    with open(path) as handle:
        return handle.read()


def test_the_table_is_logged_once_and_the_experiment_looked_up_once(run_folder, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lookups = []
    real = mlflow.set_experiment
    monkeypatch.setattr(mlflow, "set_experiment", lambda name: lookups.append(name) or real(name))
    monkeypatch.setattr(tracking, "_experiment_ids", {})
    run_id = tracking.log_run_dir(run_folder, uri)
    other = tmp_path / "gradcam__net__sample__9999999999"
    other.mkdir()
    for name in ("summary.json", "config.yaml", "per_image.parquet"):
        (other / name).write_bytes((run_folder / name).read_bytes())
    other_id = tracking.log_run_dir(other, uri)
    assert tracking.log_run_dir(run_folder, uri) == run_id  # the same folder again: the same run
    assert lookups == ["tracking-test"] and other_id != run_id
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([run_id, other_id])
    for one in (run_id, other_id):
        table = json.loads(_table_of(client, one, tmp_path / one))
        assert [row[0] for row in table["data"]] == ["a", "b"]  # logged once, not appended again
        assert json.loads(client.get_run(one).data.tags["mlflow.loggedArtifacts"]) == [
            {"path": tracking.TABLE_FILE, "type": "table"}
        ]
    # Another store is another experiment: looked up there.
    tracking.log_run_dir(run_folder, f"sqlite:///{tmp_path / 'second.db'}")
    assert lookups == ["tracking-test", "tracking-test"]


def test_an_experiment_deleted_meanwhile_is_looked_up_again(run_folder, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking, "_experiment_ids", {})
    tracking.log_run_dir(run_folder, uri)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("tracking-test").experiment_id
    client.delete_experiment(experiment_id)
    other = tmp_path / "gradcam__net__sample__9999999999"
    other.mkdir()
    (other / "summary.json").write_bytes((run_folder / "summary.json").read_bytes())
    with pytest.raises(mlflow.exceptions.MlflowException, match="active"):
        tracking.log_run_dir(other, uri)  # a run cannot be created in a deleted experiment
    assert not tracking._experiment_ids
    client.restore_experiment(experiment_id)
    run_id = tracking.log_run_dir(other, uri)
    assert client.get_run(run_id).info.experiment_id == experiment_id
