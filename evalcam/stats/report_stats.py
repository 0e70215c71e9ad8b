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
from typing import Any

from evalcam.stats.bootstrap import format_interval

log = logging.getLogger(__name__)


def interval_text(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    """``47.5 [38.1, 57.0]``, or the bare value (``–`` when missing)."""
    if value is None or value != value:
        return "–"
    return format_interval(value, low, high, digits)


def group_lines(
    rows: Sequence[Any], spec: dict[str, Any], client, alpha: float = 0.05, seed: int = 0
) -> list[str]:
    """Significance and ranking lines for one group of report rows (one run each)."""
    from evalcam.stats.compare import compare
    from evalcam.stats.runs import download_runs

    if len(rows) < 2:
        return []
    try:
        runs = download_runs(client, [r.run_id for r in rows])
        columns = set(spec["columns"])
        for run in runs:
            run.aggregations = {k: a for k, a in run.aggregations.items() if k in columns}
            run.higher = {k: h for k, h in run.higher.items() if k in columns}
        result = compare(runs, alpha=alpha, seed=seed, rank=True)
    except Exception as err:  # a group that cannot be compared must not stop the report
        log.warning("no significance tests for %s: %s", [r.method for r in rows], err)
        return [f"Significance and ranking: not available ({' '.join(str(err).split())})."]
    lines = []
    for metric in result.metrics:
        ref = result.references.get(metric)
        if ref is None:
            continue
        label = spec["columns"][metric].get("label", metric)
        others = [m for m in result.methods if m != ref and (m, metric) in result.cells]
        worse = [m for m in others if result.significant(m, metric)]
        same = [m for m in others if not result.significant(m, metric)]
        text = f"{label}: best {ref}"
        text += f"; significantly worse: {', '.join(worse)}" if worse else ""
        text += f"; not distinguishable from it: {', '.join(same)}" if same else ""
        lines.append(text)
    if lines:
        lines.insert(
            0,
            f"Significance on {result.images} shared images (paired randomization test vs the best, "
            f"Holm-corrected, alpha={alpha}):",
        )
    if result.ranking:
        board = ", ".join(str(s) for s in result.ranking)
        lines.append(
            f"Ranking across the table's metrics (LATEC median of standardised ranks, 95% bootstrap "
            f"interval of the position): {board}."
        )
    return lines
