"""Uncertainty in ``evalcam report``: intervals in the tables, significance and the ranking per group.

Each (profile, model, dataset, subset) group of a paper table is compared like ``python -m evalcam
compare`` does (:func:`evalcam.stats.compare.compare`) on the table's columns: which methods differ
significantly from the best on each column (paired randomization test, Holm-corrected over the group),
and the cross-metric ranking (LATEC's median of standardised ranks) with its bootstrap interval. Runs
logged before per-image intervals existed still get their group's tests and ranking when their records
allow it; a group that cannot be compared says why in one line instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evalcam.stats.bootstrap import format_interval

log = logging.getLogger(__name__)


def interval_text(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    """``47.5 [38.1, 57.0]``, or the bare value (``–`` when missing)."""
    if value is None or value != value:
        return "–"
    return format_interval(value, low, high, digits)


@dataclass
class GroupStats:
    """What one (profile, model, dataset, subset) group of a report can say beyond its point estimates."""

    images: int = 0
    alpha: float = 0.05
    best: dict[str, str] = field(default_factory=dict)  # metric -> method with the best estimate
    worse: dict[str, list[str]] = field(default_factory=dict)  # metric -> significantly worse than it
    tied: dict[str, list[str]] = field(default_factory=dict)  # metric -> not distinguishable from it
    ranking: str = ""
    error: str = ""

    def metric_text(self, metric: str) -> str:
        """``significantly worse than cam: a, b; not distinguishable from it: c`` for one column."""
        if self.error or metric not in self.best:
            return ""
        best, worse, tied = self.best[metric], self.worse.get(metric, []), self.tied.get(metric, [])
        if not worse:
            return f"no method differs significantly from the best estimate ({best})"
        text = f"significantly worse than {best}: {', '.join(worse)}"
        return text + (f"; not distinguishable from {best}: {', '.join(tied)}" if tied else "")

    def header(self) -> str:
        if self.error:
            return f"Significance and ranking: not available ({self.error})."
        return (
            f"Significance on the {self.images} images all runs share: paired randomization test of each "
            f"method against the best estimate, Holm-corrected per column, alpha={self.alpha}."
        )


def group_stats(
    rows: Sequence[Any], spec: dict[str, Any], client, alpha: float = 0.05, seed: int = 0
) -> GroupStats | None:
    """Significance per column and the cross-metric ranking for one group of report rows (one run each).

    Columns on which every method has the same value (e.g. the classification error of one network) have no
    best method and are left out."""
    from evalcam.stats.compare import compare
    from evalcam.stats.runs import download_runs

    if len(rows) < 2:
        return None
    try:
        runs = download_runs(client, [r.run_id for r in rows])
        columns = set(spec["columns"])
        for run in runs:
            run.aggregations = {k: a for k, a in run.aggregations.items() if k in columns}
            run.higher = {k: h for k, h in run.higher.items() if k in columns}
        result = compare(runs, alpha=alpha, seed=seed, rank=True)
    except Exception as err:  # a group that cannot be compared must not stop the report
        log.warning("no significance tests for %s: %s", [r.method for r in rows], err)
        return GroupStats(error=" ".join(str(err).split()))
    stats = GroupStats(images=result.images, alpha=alpha)
    for metric in result.metrics:
        ref = result.references.get(metric)
        values = {m: c.value for (m, k), c in result.cells.items() if k == metric}
        if ref is None or len({round(v, 12) for v in values.values()}) < 2:
            continue
        others = [m for m in result.methods if m != ref and (m, metric) in result.cells]
        stats.best[metric] = ref
        stats.worse[metric] = [m for m in others if result.significant(m, metric)]
        stats.tied[metric] = [m for m in others if not result.significant(m, metric)]
    if result.ranking:
        stats.ranking = (
            "Ranking across the table's metrics (LATEC median of standardised ranks, 95% bootstrap "
            f"interval of the position): {', '.join(str(s) for s in result.ranking)}."
        )
    return stats
