"""MLflow logging of a finished run directory.

The runner first writes everything to its run directory (summary.json, config.yaml, per-image tables,
pictures); this module then copies that directory into MLflow. When the tracking server cannot be
reached nothing is lost: the message says how to log the directory later with
``python -m evalcam log RUN_DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


RUN_KEY_TAG = "evalcam.run_key"


class TrackingUnavailable(RuntimeError):
    pass


def _find_run(experiment_id: str, key: str):
    """The MLflow run already holding run folder ``key``, or None."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1
    )
    return found[0] if found else None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` strings, the shape MLflow params take."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def sqlite_uri_for(uri: str | None) -> str:
    """A ``sqlite:///`` store next to the file store ``uri`` (``file:///x/mlruns`` -> ``sqlite:////x/mlruns.db``)."""
    path = (uri or "mlruns").removeprefix("file://") or "mlruns"
    target = Path(path).expanduser().resolve()
    return f"sqlite:///{target.parent / (target.name + '.db')}"


def store_refusal(err: BaseException, uri: str | None) -> TrackingUnavailable | None:
    """One line with the fix when MLflow refused a file store (MLflow >= 3.x: "filesystem tracking backend
    ... is in maintenance mode"); None for any other error."""
    text = str(err)
    if "filesystem tracking backend" not in text and "MLFLOW_ALLOW_FILE_STORE" not in text:
        return None
    return file_store_refusal(uri)


def check_store(uri: str | None) -> None:
    """Refuse, before a run does any work, a file store that the installed MLflow refuses (MLflow 3 does
    unless MLFLOW_ALLOW_FILE_STORE=true): asking the store is the only sure test across MLflow versions."""
    if not uri or not uri.startswith(("file:", "/", ".", "~")):
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:
        refusal = store_refusal(err, uri)
        if refusal is not None:
            raise refusal from err
        # Any other problem is reported when the run is logged; the results are saved either way.


def file_store_refusal(uri: str | None) -> TrackingUnavailable:
    return TrackingUnavailable(
        f"this MLflow refuses the file store {uri or './mlruns'}; use tracking_uri={sqlite_uri_for(uri)} "
        f"(`mlflow migrate-filestore` moves runs already there) or set MLFLOW_ALLOW_FILE_STORE=true"
    )


def _check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
    except OSError as err:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({err})") from err


def log_run_dir(run_dir: str | Path, tracking_uri: str | None = None) -> str:
    """Log the run directory written by the runner to MLflow; returns the MLflow run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    uri = tracking_uri or summary.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        _check_reachable(uri)
        mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.set_experiment(summary["experiment"])
    except Exception as err:
        refusal = store_refusal(err, uri or mlflow.get_tracking_uri())
        if refusal is None:
            raise
        raise refusal from err
    # The run folder's name hashes (method, model, dataset, metrics): logging the same folder again (a
    # finished rerun, `evalcam log` twice) updates its MLflow run instead of adding a duplicate.
    key = run_dir.resolve().name
    tags = {**summary.get("tags", {}), RUN_KEY_TAG: key}
    existing = _find_run(experiment.experiment_id, key)
    start = {"run_id": existing.info.run_id} if existing else {"run_name": summary["run_name"], "tags": tags}
    # mlflow.log_table appends to a table already in the run, downloading it first: a rerun of a finished
    # run (same folder, same images) would double its rows. Its table is only logged once.
    table_logged = existing is not None and any(
        a.path == "per_image_table.json" for a in MlflowClient().list_artifacts(existing.info.run_id)
    )
    with mlflow.start_run(**start) as run:
        if existing:
            mlflow.set_tags(tags)
        logged = existing.data.params if existing else {}
        # MLflow params are write-once: a rerun with another batch size or device keeps the first value
        # (config.yaml, re-logged below, holds this run's).
        items = [(k, v[:6000]) for k, v in summary.get("params", {}).items() if k not in logged]
        for start_at in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[start_at : start_at + 100]))
        finite = {k: v for k, v in summary.get("metrics", {}).items() if v == v}  # drop NaN
        mlflow.log_metrics(finite)
        for name in ("config.yaml", "summary.json", "per_image.parquet", "per_image.csv", "skipped.csv"):
            if (run_dir / name).exists():
                mlflow.log_artifact(str(run_dir / name))
        for picture in sorted(run_dir.glob("*.png")):
            mlflow.log_artifact(str(picture), artifact_path="figures")
        table = run_dir / "per_image.parquet"
        if table.exists() and not table_logged:
            import pandas as pd

            frame = pd.read_parquet(table)
            # log_table makes the per-image results browsable in the UI's artifact view.
            mlflow.log_table(frame.map(_jsonable), artifact_file="per_image_table.json")
        run_id = run.info.run_id
    summary["mlflow_run_id"] = run_id
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_id


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple | dict):
        # Per-image cells nest arrays inside lists (pointing game: one point per class).
        return json.dumps(value, default=lambda item: item.tolist() if hasattr(item, "tolist") else str(item))
    return value
