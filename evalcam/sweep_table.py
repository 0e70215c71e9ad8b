"""The methods x metrics table users compare, printed after a sweep (``run -m``) or an ``experiment``.

One row per run (labelled by the parts of its run name that differ between the rows, so a sweep over
methods reads ``gradcam``, ``center``, ...), one column per logged value that is compared across methods:
the keys a metric declares in ``higher_is_better`` where it does, else every key it logs but counts.
Bookkeeping (``run/...``) is left out. The table is printed and saved as CSV and Markdown beside the runs.

A Hydra sweep has no single process that sees every job's result (SLURM jobs run elsewhere), so each job
writes its run folder into its Hydra job folder (``evalcam_run.json``) and :class:`SweepTable`, a Hydra
callback, reads them back when the sweep ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

POINTER = "evalcam_run.json"
# Counts metrics log beside their values; left out where a metric declares no higher_is_better.
COUNTS = {"images", "degenerate_maps", "evaluated", "evaluated_difficult", "classes_evaluated", "skipped"}


def compared_keys(metrics: dict[str, float], directions: Mapping[str, bool] | None = None) -> list[str]:
    """The keys of ``metrics`` a comparison shows (see the module doc), in logged order. ``directions``:
    the run's own ``higher_is_better`` by logged key (summary.json), whose keys follow the metric's
    settings (``metrics.weak_loc.topk=3`` logs ``top3_*``); a summary without it (written before runs
    recorded it) falls back on the metric class's declaration."""
    from evalcam.metrics import METRICS

    declared_by: dict[str, set[str]] = {}
    for key in directions or {}:
        prefix, _, value = key.partition("/")
        declared_by.setdefault(prefix, set()).add(value)
    keys = []
    for key in metrics:
        prefix, _, value = key.partition("/")
        if prefix == "run" or not value:
            continue
        declared = declared_by.get(prefix) or getattr(METRICS.get(prefix), "higher_is_better", None)
        if (declared and value not in declared) or (not declared and value in COUNTS):
            continue
        keys.append(key)
    return keys


def _labels(names: Sequence[str]) -> list[str]:
    """Run names shortened to what differs: ``gradcam·lite0·sample`` and ``center·lite0·sample`` ->
    ``gradcam`` and ``center``; qualifiers ``(limit=..)`` are kept whole."""
    split = []
    for name in names:
        base, _, extra = name.partition(" (")
        split.append((base.split("·"), f" ({extra}" if extra else ""))
    width = max(len(parts) for parts, _ in split)
    varying = [
        i for i in range(width) if len({parts[i] if i < len(parts) else "" for parts, _ in split}) > 1
    ] or [0]
    return ["·".join(parts[i] for i in varying if i < len(parts)) + extra for parts, extra in split]


def comparison_table(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows: runs; columns: the compared metric keys of every run (a run that lacks one shows NaN)."""
    columns: list[str] = []
    for summary in summaries:
        shown = compared_keys(summary.get("metrics", {}), summary.get("higher_is_better"))
        columns += [k for k in shown if k not in columns]
    labels = _labels([str(s.get("run_name", "?")) for s in summaries])
    rows = [[s.get("metrics", {}).get(k, float("nan")) for k in columns] for s in summaries]
    table = pd.DataFrame(rows, index=pd.Index(labels, name="run"), columns=columns)
    # Each value's bootstrap interval (``<key>/ci_low``, ``/ci_high`` in the run's summary), kept beside
    # the numeric table so that its columns stay the compared values.
    nan = float("nan")
    table.attrs["ci"] = {
        k: [
            (s.get("metrics", {}).get(f"{k}/ci_low", nan), s.get("metrics", {}).get(f"{k}/ci_high", nan))
            for s in summaries
        ]
        for k in columns
    }
    return table


def _cell(value: float, interval: tuple[float, float] | None, digits: int) -> str:
    if value != value:
        return "–"
    text = f"{value:.{digits}f}"
    if interval is not None and interval[0] == interval[0] and interval[1] == interval[1]:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (no extra dependency: ``DataFrame.to_markdown`` needs tabulate); each value
    with its bootstrap interval where the run logged one: ``0.4750 [0.3250, 0.6250]``."""
    header = [table.index.name or "run", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    intervals = table.attrs.get("ci", {})
    for row, (label, values) in enumerate(zip(table.index, table.itertuples(index=False), strict=True)):
        cells = [
            _cell(v, intervals[k][row] if k in intervals else None, digits)
            for k, v in zip(table.columns, values, strict=True)
        ]
        lines.append("| " + " | ".join([str(label), *cells]) + " |")
    return "\n".join(lines)


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``<key>/ci_low`` and ``<key>/ci_high`` columns after each value's column (CSV)."""
    out = pd.DataFrame(index=table.index)
    for key in table.columns:
        out[key] = table[key]
        if key in table.attrs.get("ci", {}):
            out[f"{key}/ci_low"] = [low for low, _ in table.attrs["ci"][key]]
            out[f"{key}/ci_high"] = [high for _, high in table.attrs["ci"][key]]
    return out


def save_and_print(table: pd.DataFrame, folder: str | Path, stem: str = "comparison") -> list[Path]:
    """Write ``<folder>/<stem>.csv`` and ``.md``, print the table and where it went."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    with_intervals(table).to_csv(csv_path)
    markdown = to_markdown(table)
    md_path.write_text(markdown + "\n")
    print(f"\n{markdown}\n\ntable saved: {csv_path} and {md_path}")
    return [csv_path, md_path]


def summaries_of(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The ``summary.json`` of each run folder that has one (a failed run has none and is left out)."""
    out = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "summary.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def record_job(job_dir: str | Path, run_dir: str | Path) -> None:
    """Leave the run folder of one sweep job in its Hydra job folder, for :class:`SweepTable`."""
    (Path(job_dir) / POINTER).write_text(json.dumps({"run_dir": str(Path(run_dir).resolve())}))


def sweep_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """Run folders recorded by the jobs of one sweep, in job order."""
    found = []
    for pointer in Path(sweep_dir).glob(f"*/{POINTER}"):
        job = pointer.parent.name
        found.append(
            (int(job) if job.isdigit() else 1 << 30, job, Path(json.loads(pointer.read_text())["run_dir"]))
        )
    return [run_dir for *_, run_dir in sorted(found)]


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; keeps this module importable without it
    Callback = object  # type: ignore[assignment,misc]


class SweepTable(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: after ``run -m``, print the methods x metrics table and save it in the sweep folder."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summaries = summaries_of(sweep_run_dirs(sweep_dir))
        if not summaries:
            log.warning("no finished run in %s: no comparison table", sweep_dir)
            return
        save_and_print(comparison_table(summaries), sweep_dir)
