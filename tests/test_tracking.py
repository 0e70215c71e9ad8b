"""MLflow logging of a finished run folder (evalcam.tracking): a run whose tracking server is unreachable
keeps its results, and ``log_run_dir`` logs it later, once per configuration."""

from __future__ import annotations

import json

from conftest import make_config

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
