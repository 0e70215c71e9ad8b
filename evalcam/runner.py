"""The main job: one (method, model, dataset) run, from a plain config dict to a run directory + MLflow.

The config's keys, types and defaults are :class:`evalcam.schema.RunConfig`.

Maps are computed once per batch and every selected metric reads them. Per-image results and metric
states are appended batch by batch (see :mod:`evalcam.results`), so a rerun of the same command resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

import evalcam
from evalcam import __version__
from evalcam.batching import check_saved_batches, plan_batches
from evalcam.config import load_configured_model
from evalcam.data import Sample, SkippedImage, build_dataset, collate_samples
from evalcam.devices import resolve_device
from evalcam.methods import build_explainer, method_tags
from evalcam.metrics import build_metrics
from evalcam.models.chunked import compile_forwards
from evalcam.models.proxy_heads import apply_head
from evalcam.naming import run_name as _named
from evalcam.pacing import ExampleMaps, Pace, load_example_maps
from evalcam.pipeline import RunContext, evaluate_batch
from evalcam.requirements import check_requirements, typed_overrides
from evalcam.results import ResultStore, storage_error, write_atomic
from evalcam.schema import RunConfig, with_defaults
from evalcam.stats.bootstrap import run_intervals
from evalcam.stats.seed import resolve_seeds
from evalcam.tracking import TrackingUnavailable, check_store, flatten, log_run_dir

log = logging.getLogger(__name__)

# Start of the time run/wall_seconds counts: evalcam's import for the first run, then each run's end.
_last_run_end = getattr(evalcam, "IMPORTED_AT", time.perf_counter())

# Settings that change numbers; batch size, device and workers must not (tested), so they stay out.
RESULT_KEYS = ("method", "model", "dataset", "metrics")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    mlflow_run_id: str | None
    #: why a logged value has no number (``<metric>/<key>``: reason), as in summary.json's ``notes``
    notes: dict[str, str] = field(default_factory=dict)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def run_name(config: dict[str, Any]) -> str:
    return _named(config)


def run_directory(config: dict[str, Any]) -> Path:
    # Seeds as the run resolves them: a config with null seeds names the same folder as its resolved copy.
    resolved = resolve_seeds(config)
    identity_of = {k: resolved.get(k) for k in RESULT_KEYS}
    if isinstance(identity_of.get("model"), dict) and identity_of["model"].get("head") is None:
        # model.head=null is the model's own head: folders of runs from before the key existed still match.
        identity_of["model"] = {k: v for k, v in identity_of["model"].items() if k != "head"}
    identity = json.dumps(identity_of, sort_keys=True, default=str)
    digest = hashlib.sha1(identity.encode()).hexdigest()[:10]
    name = "__".join(
        (
            config["method"]["name"].replace("/", "-"),
            config["model"]["name"],
            config["dataset"]["name"],
            digest,
        )
    )
    return Path(config.get("output_dir", RunConfig.output_dir)) / name


def _kwargs(section: dict[str, Any], drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in drop and v is not None}


def check_compatible(metrics, dataset, bundle, overrides: list[str] | None = None) -> None:
    """Mistakes that would only surface mid-run (or silently skew numbers), reported before any work."""
    check_requirements(metrics, dataset, bundle, overrides or [])
    classes = len(dataset.class_names)
    for metric in metrics:
        limit = getattr(metric, "num_classes", None)
        if limit is not None and classes > int(limit):
            raise ValueError(
                f"metrics.{metric.name}.num_classes={limit} is smaller than the {classes} classes of "
                f"{dataset.name}; set metrics.{metric.name}.num_classes={classes}"
            )


def previous_seconds(run_dir: Path, default: float | None, key: str = "run/seconds") -> float | None:
    """``key`` of the summary a finished run left in ``run_dir``, else ``default``."""
    try:
        return float(json.loads((run_dir / "summary.json").read_text())["metrics"][key])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def annotation_warnings(table: pd.DataFrame) -> float:
    """Number of annotation problems the loaders fixed or dropped (clipped boxes, unknown classes, ...)."""
    if "warnings" not in table.columns:
        return 0.0
    # Skipped images have no list there (None, or NaN once parts are concatenated).
    return float(table["warnings"].map(lambda w: len(w) if hasattr(w, "__len__") else 0).sum())


def run(config: dict[str, Any]) -> RunResult:
    """Evaluate ``config["method"]`` on ``config["dataset"]`` with ``config["model"]``."""
    started = time.perf_counter()
    config = resolve_seeds(config)  # every random part draws from the one logged `seed`
    # Direct callers may pass only what they change; a composed config is already complete and typed.
    config = with_defaults(config)
    rank, world = distributed_rank()
    device = resolve_device(config["device"])
    model_cfg, method_cfg = config["model"], config["method"]
    bundle = load_configured_model(model_cfg, device)
    dataset = build_dataset(config["dataset"]["name"], **_kwargs(config["dataset"]))
    bundle = apply_head(model_cfg.get("head"), bundle, dataset.label_space)
    explainer = build_explainer(method_cfg["name"], bundle, **dict(method_cfg.get("params") or {}))
    metrics = build_metrics(config["metrics"] or {}, device)
    compile_forwards(bool(config.get("compile", False)))
    check_compatible(metrics, dataset, bundle, typed_overrides(config))
    if config["mlflow"] and rank == 0:
        check_store(config["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI"))

    run_dir = run_directory(config)
    store = ResultStore(run_dir, rank=rank)
    if not config["resume"] and store.parts():
        raise FileExistsError(
            f"{run_dir} holds results of an earlier run; resume=true continues it, "
            f"or delete the folder to start over"
        )
    done = store.done_ids()
    if world > 1:
        import torch.distributed as dist

        # Every rank must read the same finished set before any rank writes a part of this run,
        # otherwise the ranks shard different image lists (images skipped or evaluated twice).
        dist.barrier()
    # Metrics that score an image against the others of its batch need the batches of an uninterrupted
    # run, whatever was saved before and however many processes share the work (evalcam.batching).
    dependent = [metric.name for metric in metrics if metric.batch_dependent]
    if dependent:
        check_saved_batches(store.part_ids(), dataset.ids, config["batch_size"], dependent, run_dir)
    if done:
        log.info("resuming %s: %d of %d images already done", run_dir, len(done), len(dataset))
    # before sharding: every rank agrees whether the run had work left
    pending = sum(image_id not in done for image_id in dataset.ids)
    # torchrun: each process takes every world-th remaining image (whole batches when dependent)
    batches = plan_batches(dataset.ids, done, config["batch_size"], rank, world, dependent)

    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=config["num_workers"],
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
    )
    # Slow set-ups are announced with an estimate and then saved image by image (see evalcam.pacing).
    todo = sum(len(batch) for batch in batches)
    pace = Pace(
        bundle,
        device,
        config["batch_size"],
        todo,
        run_name(config),
        slow_ratio=config["slow_ratio"],
        whole_batches=dependent,
    )
    examples = ExampleMaps(run_dir, config["n_examples"], enabled=rank == 0)
    context = RunContext.build(bundle, explainer, metrics, device, config["topk"], examples)
    bar = tqdm(
        total=todo,
        desc=run_name(config),
        unit="image",
        disable=not config["progress"] or rank != 0,
    )
    try:
        for batch in loader:
            samples = [s for s in batch if isinstance(s, Sample)]
            rows: list[dict[str, Any]] = [
                {"image_id": s.image_id, "status": "skipped", "error": s.reason}
                for s in batch
                if isinstance(s, SkippedImage)
            ]
            for part in pace.parts(samples) if samples else [[]]:
                # Each part stores its own images' state; the run's state is their sum.
                context.reset_metrics()
                if part:
                    rows += evaluate_batch(part, context)
                store.append(rows, context.states())
                bar.update(len(rows))
                rows = []
    except KeyboardInterrupt:
        # Finished batches are already on disk (atomic parts); say so instead of a bare traceback.
        log.error(
            "interrupted: %d of %d images are saved in %s; rerun the same command to resume",
            len(store.done_ids()),
            len(dataset),
            run_dir,
        )
        raise
    finally:
        bar.close()

    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every shard's parts are on disk before rank 0 sums them
        if rank != 0:
            dist.destroy_process_group()
            return RunResult(run_dir=run_dir, metrics={}, mlflow_run_id=None)
    states = store.load_states()
    for metric in metrics:
        if states is None:
            metric.reset()
        else:
            metric.load_state_dict(states[metric.name])
    seconds: float = time.perf_counter() - started
    kept_wall = None
    if not pending:
        # Nothing was evaluated: a rerun of a finished run keeps the times the run took, not the rerun's.
        seconds = previous_seconds(run_dir, seconds) or seconds
        kept_wall = previous_seconds(run_dir, None, "run/wall_seconds")
    result = finish(
        config, run_dir, store, metrics, bundle, explainer, dataset, seconds, kept_wall, examples.samples
    )
    if world > 1:
        dist.destroy_process_group()
    return result


def finish(
    config,
    run_dir: Path,
    store: ResultStore,
    metrics,
    bundle,
    explainer,
    dataset,
    seconds: float,
    kept_wall: float | None = None,
    decoded: Mapping[str, Sample] | None = None,
) -> RunResult:
    table = store.table()
    skipped = table[table["status"] == "skipped"] if len(table) else table
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    for metric in metrics:
        computed = metric.compute()
        values.update({f"{metric.name}/{k}": v for k, v in computed.items()})
        # A value without a number (NaN, or left out) says why, instead of passing for a result.
        notes.update({f"{metric.name}/{k}": why for k, why in metric.notes(computed).items()})
    for key, why in notes.items():
        log.warning("%s: no value: %s", key, why)
    values["run/images_evaluated"] = float((table["status"] == "ok").sum()) if len(table) else 0.0
    values["run/images_skipped"] = float(len(skipped))
    values["run/annotation_warnings"] = annotation_warnings(table)
    values["run/seconds"] = seconds
    values.update(intervals(config, metrics, table, values))

    # Whole files or nothing: a full disk here leaves the parts (and any earlier summary) as they were.
    target = run_dir / "per_image.parquet"
    try:
        write_atomic(target, lambda tmp: table.to_parquet(tmp))
        target = run_dir / "per_image.csv"
        write_atomic(target, lambda tmp: table.to_csv(tmp, index=False))
        if len(skipped):
            target = run_dir / "skipped.csv"
            write_atomic(target, lambda tmp: skipped[["image_id", "error"]].to_csv(tmp, index=False))
            log.warning("%d image(s) could not be read and were skipped; list: %s", len(skipped), target)
        target = run_dir / "config.yaml"
        write_atomic(target, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
        target = run_dir / "examples.png"
        draw_examples(config, run_dir, table, bundle, explainer, dataset, decoded)
    except OSError as err:
        raise storage_error(err, target, f"The per-image results in {store.parts_dir} are intact.") from err

    method = config["method"]["name"]
    family, paper = method_tags(method)
    summary = {
        "run_name": run_name(config),
        "experiment": config["experiment"] or f"{config['dataset']['name']}/{config['model']['name']}",
        "tracking_uri": config["tracking_uri"],
        "tags": {
            "method": method,
            "method_family": family,
            "paper": paper,
            "model": bundle.name,
            "model_head": str(config["model"].get("head") or "own"),
            "dataset": config["dataset"]["name"],
            "weights": str(bundle.weights),
            "target_layer": str(bundle.target_layer),
            "evalcam_version": __version__,
            "device": str(bundle.device),
        },
        "params": flatten(config),
        "metrics": values,
        # The direction of each logged key as this run's metric instances declare it (their keys may
        # depend on settings: weak_loc.topk=3 logs top3_*); the comparison table reads it.
        "higher_is_better": {f"{m.name}/{k}": v for m in metrics for k, v in m.higher_is_better.items()},
        "notes": notes,
    }
    try:
        write_atomic(run_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    except OSError as err:
        intact = f"The per-image results in {store.parts_dir} are intact."
        raise storage_error(err, run_dir / "summary.json", intact) from err

    run_id = None
    if config["mlflow"]:
        try:
            run_id = log_run_dir(run_dir, config["tracking_uri"])
            values["run/wall_seconds"] = wall_seconds(run_dir, run_id, config["tracking_uri"], kept_wall)
        except Exception as err:  # tracking is best effort: the results are already saved
            reason = str(err) if isinstance(err, TrackingUnavailable) else f"MLflow logging failed ({err})"
            log.error(
                "%s. Results are saved in %s; log them later with: python -m evalcam log %s",
                " ".join(reason.split()),  # one line, whatever the MLflow client put in its message
                run_dir,
                run_dir,
            )
    if "run/wall_seconds" not in values:
        values["run/wall_seconds"] = wall_seconds(run_dir, None, None, kept_wall)
    return RunResult(run_dir=run_dir, metrics=values, mlflow_run_id=run_id, notes=notes)


def wall_seconds(run_dir: Path, run_id: str | None, tracking_uri: str | None, kept: float | None) -> float:
    """``run/wall_seconds``: everything the run cost, imports and MLflow logging included (``run/seconds``
    times the batch loop and the tables only). Counted from evalcam's import for the first run of a process
    and from the previous run's end for the next ones, so a sweep shows that it pays the imports once. A
    rerun of a finished run keeps (``kept``) the figure of the run that did the work. Added to summary.json,
    and to the MLflow run once it is logged (the logging is part of what it measures)."""
    global _last_run_end
    now = time.perf_counter()
    seconds, _last_run_end = now - _last_run_end, now
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    if kept is not None:
        seconds = kept
    summary["metrics"]["run/wall_seconds"] = seconds
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    if run_id is not None:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri).log_metric(run_id, "run/wall_seconds", seconds)
    return seconds


def intervals(config, metrics, table: pd.DataFrame, values: dict[str, float]) -> dict[str, float]:
    """Bootstrap ``ci_low``/``ci_high`` of every logged value (``stats.bootstrap`` resamples of the
    images, ``stats.confidence``; ``stats.bootstrap=null`` or 0 turns them off)."""
    settings = config["stats"]
    resamples = settings["bootstrap"]
    if not resamples:
        return {}
    return run_intervals(
        metrics,
        table,
        values,
        resamples=int(resamples),
        confidence=settings["confidence"],
        seed=settings["seed"] or 0,
    )


def draw_examples(
    config,
    run_dir: Path,
    table: pd.DataFrame,
    bundle,
    explainer,
    dataset,
    decoded: Mapping[str, Sample] | None = None,
) -> None:
    """Figure of the first few images: image | top-1 map | predicted vs ground-truth boxes.

    The maps are the ones the run computed (``example_maps.pt``, :mod:`evalcam.pacing`): nothing is
    explained again. A run folder from before they were kept gets no new figure (its old one stays).
    ``decoded``: samples the batch loop already read, by image id (the others are read from ``dataset``).
    """
    # matplotlib is imported here, not with the runner: a run with n_examples=0 never pays for it.
    from evalcam import figures

    count = config["n_examples"]
    if count <= 0 or not len(table):
        return
    stored = load_example_maps(run_dir / "example_maps.pt")[:count]
    if not stored:
        log.info("no stored example maps in %s: examples.png is not redrawn", run_dir)
        return
    by_id = table.set_index("image_id")
    index_of = {image_id: i for i, image_id in enumerate(dataset.ids)}
    rows = []
    for entry in stored:
        if entry["image_id"] not in index_of:
            continue
        sample = (decoded or {}).get(entry["image_id"]) or dataset[index_of[entry["image_id"]]]
        if not isinstance(sample, Sample):
            continue
        cls = int(entry["class"])
        record = by_id.loc[sample.image_id] if sample.image_id in by_id.index else {}
        box = record.get("weak_loc.top1_box") if hasattr(record, "get") else None
        name = bundle.categories[cls] if cls < len(bundle.categories) else str(cls)
        gt = [b.tolist() for c in sample.labels for b in sample.boxes.get(c, [])]
        rows.append(
            figures.ExampleRow(
                image=sample.image,
                cam=entry["map"],
                title=f"{sample.image_id}: {name}",
                pred_box=None if box is None else list(box),
                gt_boxes=gt,
            )
        )
    if rows:
        figures.example_grid(rows, run_dir / "examples.png", suptitle=run_name(config))
