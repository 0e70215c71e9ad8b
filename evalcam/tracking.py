"""MLflow logging of a finished run directory.

The runner first writes everything to its run directory (summary.json, config.yaml, per-image tables,
pictures); this module then copies that directory into MLflow. When the tracking server cannot be
reached nothing is lost: the message says how to log the directory later with
``python -m evalcam log RUN_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
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

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    uri = tracking_uri or summary.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        _check_reachable(uri)
        mlflow.set_tracking_uri(uri)
    where = (mlflow.get_tracking_uri(), summary["experiment"])
    experiment_id = _experiment_ids.get(where)
    if experiment_id is None:
        try:
            experiment_id = mlflow.set_experiment(summary["experiment"]).experiment_id
        except Exception as err:
            refusal = store_refusal(err, uri or mlflow.get_tracking_uri())
            if refusal is None:
                raise
            raise refusal from err
    try:
        run_id = _log_to(run_dir, summary, experiment_id)
    except BaseException:
        _experiment_ids.pop(where, None)  # e.g. deleted meanwhile: the next call asks the store again
        raise
    _experiment_ids[where] = experiment_id
    summary["mlflow_run_id"] = run_id
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_id


# The experiment ids this process looked up, by (tracking URI, experiment name): every point of a sweep logs
# to the same experiment, and mlflow.set_experiment is a query each time. The runs are created with the id.
_experiment_ids: dict[tuple[str, str], str] = {}

TABLE_FILE = "per_image_table.json"


def _log_to(run_dir: Path, summary: dict[str, Any], experiment_id: str) -> str:
    """Log ``run_dir`` into the experiment ``experiment_id``, updating the MLflow run already holding it."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    # The run folder's name hashes (method, model, dataset, metrics): logging the same folder again (a
    # finished rerun, `evalcam log` twice) updates its MLflow run instead of adding a duplicate.
    key = run_dir.resolve().name
    # A value without a number carries its reason as a tag (its metric is absent: MLflow drops NaN).
    notes = {f"note/{name}": why for name, why in summary.get("notes", {}).items()}
    tags = {**summary.get("tags", {}), **notes, RUN_KEY_TAG: key}
    existing = _find_run(experiment_id, key)
    start = (
        {"run_id": existing.info.run_id}
        if existing
        else {"run_name": summary["run_name"], "tags": tags, "experiment_id": experiment_id}
    )
    # mlflow.log_table appends to a table already in the run, downloading it first: a rerun of a finished
    # run (same folder, same images) would double its rows. Its table is only logged once.
    table_logged = existing is not None and any(
        a.path == TABLE_FILE for a in MlflowClient().list_artifacts(existing.info.run_id)
    )
    with mlflow.start_run(**start) as run:
        run_id = run.info.run_id
        logged = existing.data.params if existing else {}
        # MLflow params are write-once: a rerun with another batch size or device keeps the first value
        # (config.yaml, re-logged below, holds this run's).
        params = [Param(k, v[:6000]) for k, v in summary.get("params", {}).items() if k not in logged]
        now = int(time.time() * 1000)
        finite = [
            Metric(k, float(v), now, 0) for k, v in summary.get("metrics", {}).items() if v == v
        ]  # NaN dropped
        run_tags = [RunTag(k, str(v)) for k, v in tags.items()] if existing else []
        # Batched: one request per 100 params / 1000 metrics instead of one per value (MLflow's caps).
        client = MlflowClient()
        calls = max(-(-len(params) // 100), -(-len(finite) // 1000), -(-len(run_tags) // 100), 1)
        for i in range(calls):
            client.log_batch(
                run_id,
                metrics=finite[i * 1000 : (i + 1) * 1000],
                params=params[i * 100 : (i + 1) * 100],
                tags=run_tags[i * 100 : (i + 1) * 100],
            )
        manifest = _load_manifest(run_dir, run_id)
        files = [(run_dir / n, None) for n in ARTIFACTS if (run_dir / n).exists()]
        files += [(picture, "figures") for picture in sorted(run_dir.glob("*.png"))]
        for path, folder in files:
            digest = _digest(path)
            if manifest.get(path.name) == digest:
                continue  # unchanged since this folder was last logged to this MLflow run
            mlflow.log_artifact(str(path), artifact_path=folder)
            manifest[path.name] = digest
        table = run_dir / "per_image.parquet"
        if table.exists() and not table_logged:
            import pandas as pd

            frame = pd.read_parquet(table).map(_jsonable)
            # log_table makes the per-image results browsable in the UI's artifact view.
            mlflow.log_table(frame, artifact_file=TABLE_FILE)
        _save_manifest(run_dir, run_id, manifest)
    return run_id


# Files of a run folder logged as artifacts (pictures too, under figures/).
ARTIFACTS = ("config.yaml", "summary.json", "per_image.parquet", "per_image.csv", "skipped.csv")
MANIFEST = ".mlflow_logged.json"


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _load_manifest(run_dir: Path, run_id: str) -> dict[str, str]:
    """Digests of the files already uploaded to MLflow run ``run_id`` (empty for another run or store)."""
    try:
        saved = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return dict(saved.get("files", {})) if saved.get("run_id") == run_id else {}


def _save_manifest(run_dir: Path, run_id: str, files: dict[str, str]) -> None:
    (run_dir / MANIFEST).write_text(json.dumps({"run_id": run_id, "files": files}, indent=1))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple | dict):
        # Per-image cells nest arrays inside lists (pointing game: one point per class).
        return json.dumps(value, default=lambda item: item.tolist() if hasattr(item, "tolist") else str(item))
    return value
