"""Runs to compare: finished run folders, or MLflow runs (their logged folder files), aligned on images.

A run is what ``python -m evalcam run`` writes: ``summary.json`` (logged values), ``config.yaml`` (the
settings, from which the metrics are rebuilt to know how each value is aggregated) and
``per_image.parquet`` (the per-image records every interval and test is computed from).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evalcam.stats.aggregation import Aggregation
from evalcam.stats.bootstrap import evaluated_rows

RUN_FILES = ("summary.json", "config.yaml", "per_image.parquet")


@dataclass
class RunRecords:
    label: str  # the method, or method·model when methods repeat
    method: str
    model: str
    dataset: str
    source: str  # folder or MLflow run id
    values: dict[str, float]
    table: pd.DataFrame  # evaluated images, indexed by image_id
    aggregations: dict[str, Aggregation] = field(default_factory=dict)
    higher: dict[str, bool] = field(default_factory=dict)


def load_folder(folder: str | Path, source: str | None = None) -> RunRecords:
    """One run folder; a folder that is not one is a one-line error naming what is missing."""
    from evalcam.metrics import build_metrics

    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{folder} is not a folder; pass run folders written by `python -m evalcam run`")
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a finished evalcam run folder (no {', '.join(missing)}); pass the folder "
            f"`python -m evalcam run` printed as 'run folder:'"
        )
    summary = json.loads((path / "summary.json").read_text())
    config: dict[str, Any] = yaml.safe_load((path / "config.yaml").read_text()) or {}
    table = evaluated_rows(pd.read_parquet(path / "per_image.parquet"))
    table = table.drop_duplicates("image_id", keep="last").set_index("image_id", drop=False)
    values = {k: float(v) for k, v in summary.get("metrics", {}).items()}
    run = RunRecords(
        label=config["method"]["name"],
        method=config["method"]["name"],
        model=config["model"]["name"],
        dataset=config["dataset"]["name"],
        source=source or str(path),
        values=values,
        table=table,
    )
    for metric in build_metrics(config.get("metrics") or {}, "cpu"):
        keys = [k.split("/", 1)[1] for k in values if k.startswith(f"{metric.name}/")]
        for key, agg in metric.aggregations(keys).items():
            run.aggregations[f"{metric.name}/{key}"] = agg
            if key in metric.higher_is_better:
                run.higher[f"{metric.name}/{key}"] = metric.higher_is_better[key]
    return run


def load_mlflow(
    experiment: str | None, filter_string: str | None, tracking_uri: str | None
) -> list[RunRecords]:
    """Finished MLflow runs of ``experiment`` matching ``filter_string`` (newest per run folder), read from
    the run-folder files they logged."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from evalcam.tracking import RUN_KEY_TAG

    client = MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(sorted(e.name for e in client.search_experiments()))
            raise ValueError(f"no MLflow experiment {experiment!r} in this store; experiments: {names}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    query = " and ".join(q for q in ("attributes.status = 'FINISHED'", filter_string) if q)
    try:
        runs = client.search_runs(ids, query, order_by=["attributes.start_time DESC"])
    except Exception as err:  # MlflowException on a malformed filter: one line, the store's reason
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"MLflow cannot search with filter {filter_string!r}: {reason}") from None
    seen: set[str] = set()
    picked = []
    for run in runs:
        key = run.data.tags.get(RUN_KEY_TAG, run.info.run_id)
        if key in seen or run.data.tags.get("evalcam.kind") == "comparison":
            continue
        seen.add(key)
        picked.append(run.info.run_id)
    out = download_runs(client, picked)
    out.reverse()  # oldest first: the order a sweep ran them in
    if not out:
        where = f"experiment {experiment!r}" if experiment else "the store"
        raise ValueError(f"no finished runs in {where} match filter {filter_string!r}")
    return out


def download_runs(client, run_ids: Sequence[str]) -> list[RunRecords]:
    """The runs ``run_ids`` of an MLflow store, read from the run-folder files they logged."""
    # One progress bar per small file would bury the table.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = []
    for run_id in run_ids:
        target = Path(tempfile.mkdtemp(prefix="evalcam-compare-"))
        for name in RUN_FILES:
            try:
                client.download_artifacts(run_id, name, str(target))
            except Exception as err:  # an artifact store error names the file; say which run lacks it
                raise ValueError(
                    f"MLflow run {run_id} has no {name} artifact ({type(err).__name__}); it was not "
                    f"logged by `python -m evalcam run`"
                ) from None
        out.append(load_folder(target, source=run_id))
    return out


def label_runs(runs: Sequence[RunRecords]) -> None:
    """Methods name the rows; the model joins the label where a method occurs more than once, and a
    counter where that is still ambiguous."""
    methods = [r.method for r in runs]
    for run in runs:
        run.label = run.method if methods.count(run.method) == 1 else f"{run.method}·{run.model}"
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label}·{run.source.rstrip('/').split('/')[-1][:12]}"


def shared_images(runs: Sequence[RunRecords]) -> list[str]:
    """Image ids every run evaluated (sorted); one-line errors for runs that cannot be paired."""
    if len(runs) < 2:
        raise ValueError(f"compare needs at least two runs; got {len(runs)}")
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        counts = ", ".join(f"{d}: {sum(r.dataset == d for r in runs)} run(s)" for d in datasets)
        raise ValueError(
            f"runs are on different datasets ({counts}); compare runs of one dataset "
            f"(e.g. --filter \"tags.dataset = '{datasets[0]}'\")"
        )
    common = set(runs[0].table.index)
    for run in runs[1:]:
        common &= set(run.table.index)
    if not common:
        sizes = ", ".join(f"{r.label}: {len(r.table)}" for r in runs)
        raise ValueError(
            f"the runs share no evaluated images (images per run: {sizes}); compare runs of the same "
            f"dataset subset (dataset.limit, dataset.classes, dataset.subset_seed)"
        )
    return sorted(common)
