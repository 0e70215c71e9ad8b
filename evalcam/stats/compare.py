"""``python -m evalcam compare``: methods x metrics on the images the runs share, with intervals and tests.

For every metric key measured with the same aggregation by at least two runs: each run's value on the
shared images with its percentile-bootstrap interval (:mod:`evalcam.stats.bootstrap`; one set of image
resamples for the whole table), and a paired randomization test (:mod:`evalcam.stats.tests`) of each
method against the reference (``--reference NAME``; default: the best method on that metric), Holm-
corrected across all comparisons of the table. ``*`` marks a difference significant at ``--alpha`` after
correction; the reference is marked ``ref``. A metric a run did not measure is an explicit gap (``—``),
never a number. ``--rank`` adds the cross-metric leaderboard (:mod:`evalcam.stats.ranking`).

Outputs: the table in the terminal, ``comparison.{csv,md,html}`` (and ``ranking.*``) in ``--out``, and
an MLflow run (experiment ``compare/<dataset>``, tag ``evalcam.kind=comparison``) holding them as
artifacts so the MLflow UI shows the comparison.
"""

from __future__ import annotations

import argparse
import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalcam.stats.aggregation import Aggregation
from evalcam.stats.bootstrap import check_settings, percentile_interval, resampled_values
from evalcam.stats.ranking import Standing, leaderboard
from evalcam.stats.runs import RunRecords, label_runs, load_folder, load_mlflow, shared_images
from evalcam.stats.seed import derive_seed
from evalcam.stats.tests import holm, paired_test

GAP = "—"


@dataclass
class Cell:
    value: float
    low: float
    high: float
    p_value: float | None = None  # vs the reference, Holm-adjusted in ``p_holm``
    p_holm: float | None = None
    difference: float | None = None
    reference: bool = False


@dataclass
class Comparison:
    methods: list[str]
    metrics: list[str]
    images: int
    dataset: str
    cells: dict[tuple[str, str], Cell]  # (method, metric) -> cell; absent: not measured
    references: dict[str, str]  # metric -> reference method
    higher: dict[str, bool]
    alpha: float
    confidence: float
    sources: dict[str, str]
    notes: list[str] = field(default_factory=list)
    ranking: list[Standing] | None = None

    def significant(self, method: str, metric: str) -> bool:
        cell = self.cells.get((method, metric))
        return bool(cell and cell.p_holm is not None and cell.p_holm < self.alpha)


def _aligned(runs: Sequence[RunRecords], ids: list[str], metric: str) -> dict[str, np.ndarray]:
    """Per run measuring ``metric``: its contributions on the shared images, computed on all the runs'
    records at once so list-valued columns (class universes) line up."""
    having = [r for r in runs if metric in r.aggregations]
    tables = [r.table.loc[ids].reset_index(drop=True) for r in having]
    matrix = having[0].aggregations[metric].contributions(pd.concat(tables, ignore_index=True))
    if matrix is None:
        return {}
    return {r.label: matrix[i * len(ids) : (i + 1) * len(ids)] for i, r in enumerate(having)}


def compare(
    runs: Sequence[RunRecords],
    reference: str | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    permutations: int = 2000,
    seed: int = 0,
    rank: bool = False,
) -> Comparison:
    check_settings(resamples, confidence)
    label_runs(runs)
    ids = shared_images(runs)
    methods = [r.label for r in runs]
    if reference is not None:
        matches = [r.label for r in runs if reference in (r.label, r.method)]
        if len(matches) != 1:
            raise ValueError(
                f"--reference {reference!r} names {len(matches)} of the runs; "
                f"use one of: {', '.join(methods)}"
            )
        reference = matches[0]
    notes: list[str] = []
    keys = sorted({k for r in runs for k in r.aggregations})
    metrics: list[str] = []
    blocks: dict[str, dict[str, np.ndarray]] = {}
    aggs: dict[str, Aggregation] = {}
    higher: dict[str, bool] = {}
    for key in keys:
        having = [r for r in runs if key in r.aggregations]
        if len({repr(r.aggregations[key]) for r in having}) > 1:
            notes.append(f"{key}: measured with different settings in different runs; not compared")
            continue
        missing = [r.label for r in runs if key not in r.aggregations]
        if missing:
            notes.append(f"{key}: not measured by {', '.join(missing)} ({GAP} in the table)")
        aligned = _aligned(runs, ids, key)
        if not aligned:
            notes.append(f"{key}: per-image records missing; not compared")
            continue
        metrics.append(key)
        blocks[key] = aligned
        aggs[key] = having[0].aggregations[key]
        if key in having[0].higher:
            higher[key] = having[0].higher[key]
    if not metrics:
        raise ValueError("the runs have no metric in common that their per-image records can re-estimate")

    order = [(m, k) for k in metrics for m in methods if m in blocks[k]]
    sampled = resampled_values(
        [blocks[k][m] for m, k in order],
        [aggs[k] for _, k in order],
        resamples,
        derive_seed(seed, "bootstrap"),
    )
    cells: dict[tuple[str, str], Cell] = {}
    for j, (m, k) in enumerate(order):
        value = float(aggs[k].value(blocks[k][m].sum(0)[None])[0])
        low, high = percentile_interval(sampled[:, j], confidence)
        cells[(m, k)] = Cell(value, low, high)

    references: dict[str, str] = {}
    tests: list[tuple[str, str]] = []
    for k in metrics:
        present = [m for m in methods if m in blocks[k]]
        if reference is not None:
            if reference not in present:
                notes.append(f"{k}: the reference {reference} did not measure it; no tests")
                continue
            ref = reference
        elif k in higher:
            finite = [m for m in present if math.isfinite(cells[(m, k)].value)]
            if not finite:
                continue
            pick = max if higher[k] else min
            ref = pick(finite, key=lambda m: cells[(m, k)].value)
        else:
            continue  # no direction (a count, a rate of the attack): no "best" to test against
        references[k] = ref
        cells[(ref, k)].reference = True
        for m in present:
            if m == ref:
                continue
            # One stream of swaps per metric for every method (common random numbers): two methods with
            # the same records (CAM and Grad-CAM on a GAP head) get the same p-value, not a coin toss
            # around alpha.
            result = paired_test(
                blocks[k][m], blocks[k][ref], aggs[k], permutations, derive_seed(seed, f"paired:{k}")
            )
            cells[(m, k)].p_value, cells[(m, k)].difference = result.p_value, result.difference
            tests.append((m, k))
    for (m, k), p in zip(tests, holm([cells[t].p_value for t in tests]), strict=True):
        cells[(m, k)].p_holm = p

    result = Comparison(
        methods,
        metrics,
        len(ids),
        runs[0].dataset,
        cells,
        references,
        higher,
        alpha,
        confidence,
        {r.label: r.source for r in runs},
        notes,
    )
    if rank:
        # A metric whose records are the same for every method (classification error: the network's, not
        # the method's) ties everyone on every resample; it would only pull all medians to the middle.
        directed = [k for k in metrics if k in higher]
        if not directed:
            raise ValueError("--rank needs metrics with a direction (higher_is_better); these runs have none")
        first = {k: next(iter(blocks[k].values())) for k in directed}
        informative = [
            k for k in directed if not all(np.array_equal(b, first[k]) for b in blocks[k].values())
        ]
        ranked = informative or directed  # all identical: every method ties, which is the honest ranking
        result.ranking = leaderboard(
            methods,
            [[blocks[k].get(m) for k in ranked] for m in methods],
            [aggs[k] for k in ranked],
            [higher[k] for k in ranked],
            resamples,
            confidence,
            derive_seed(seed, "ranking"),
        )
    return result


def _number(value: float, digits: int = 4) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"


def cell_text(comparison: Comparison, method: str, metric: str) -> str:
    """``0.4750 [0.3810, 0.5700] *`` (``ref`` for the reference; ``—`` when not measured)."""
    cell = comparison.cells.get((method, metric))
    if cell is None:
        return GAP
    text = f"{_number(cell.value)} [{_number(cell.low)}, {_number(cell.high)}]"
    if cell.reference:
        return f"{text} ref"
    return f"{text} *" if comparison.significant(method, metric) else text


def _header(metric: str, comparison: Comparison) -> str:
    arrow = {True: " ↑", False: " ↓"}.get(comparison.higher.get(metric))  # type: ignore[arg-type]
    return metric + (arrow or "")


def legend(comparison: Comparison) -> list[str]:
    pct = round(100 * comparison.confidence)
    return [
        f"{comparison.images} shared images of {comparison.dataset}; value [{pct}% bootstrap interval].",
        f"* differs from the metric's reference (ref) at alpha={comparison.alpha} (paired randomization "
        f"test, Holm-corrected over {sum(c.p_holm is not None for c in comparison.cells.values())} "
        "comparisons); ↑/↓: higher/lower is better.",
        *comparison.notes,
    ]


def rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["method", *(_header(k, comparison) for k in comparison.metrics)]
    return header, [
        [m, *(cell_text(comparison, m, k) for k in comparison.metrics)] for m in comparison.methods
    ]


def ranking_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    pct = round(100 * comparison.confidence)
    header = ["position", "method", f"{pct}% interval", "median standardised rank"]
    body = [
        [str(s.position), s.method, f"{s.low}–{s.high}", f"{s.score:.3f}"] for s in comparison.ranking or []
    ]
    return header, body


def to_text(comparison: Comparison) -> str:
    lines = []
    for header, body in [rows(comparison)] + ([ranking_rows(comparison)] if comparison.ranking else []):
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]]
        lines.append("")
    return "\n".join([*lines, *legend(comparison)])


def to_markdown(comparison: Comparison) -> str:
    def table(header: list[str], body: list[list[str]]) -> list[str]:
        return [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            *("| " + " | ".join(r) + " |" for r in body),
        ]

    out = ["# Comparison", "", *table(*rows(comparison)), ""]
    if comparison.ranking:
        out += [
            "## Ranking across metrics (median of standardised ranks, LATEC)",
            "",
            *table(*ranking_rows(comparison)),
            "",
        ]
    out += [f"- {line}" for line in legend(comparison)]
    out += ["", "Runs:", *(f"- {m}: `{s}`" for m, s in comparison.sources.items())]
    return "\n".join(out) + "\n"


def to_html(comparison: Comparison) -> str:
    def table(header: list[str], body: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"

    parts = [
        "<html><head><meta charset='utf-8'><title>evalcam comparison</title></head><body>",
        "<h1>Comparison</h1>",
        table(*rows(comparison)),
    ]
    if comparison.ranking:
        parts += [
            "<h2>Ranking across metrics (median of standardised ranks, LATEC)</h2>",
            table(*ranking_rows(comparison)),
        ]
    parts += [
        "<ul>",
        *(f"<li>{html.escape(line)}</li>" for line in legend(comparison)),
        "</ul></body></html>",
    ]
    return "\n".join(parts)


CSV_FIELDS = [
    "method",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "higher_is_better",
    "reference",
    "difference_vs_reference",
    "p_value",
    "p_holm",
    "significant",
    "images",
    "source",
]


def write_csv(comparison: Comparison, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for k in comparison.metrics:
            for m in comparison.methods:
                cell = comparison.cells.get((m, k))
                if cell is None:
                    writer.writerow(
                        [
                            m,
                            k,
                            "",
                            "",
                            "",
                            comparison.higher.get(k, ""),
                            comparison.references.get(k, ""),
                            "",
                            "",
                            "",
                            "",
                            comparison.images,
                            comparison.sources[m],
                        ]
                    )
                    continue
                writer.writerow(
                    [
                        m,
                        k,
                        cell.value,
                        cell.low,
                        cell.high,
                        comparison.higher.get(k, ""),
                        comparison.references.get(k, ""),
                        "" if cell.difference is None else cell.difference,
                        "" if cell.p_value is None else cell.p_value,
                        "" if cell.p_holm is None else cell.p_holm,
                        comparison.significant(m, k),
                        comparison.images,
                        comparison.sources[m],
                    ]
                )


def write_ranking_csv(comparison: Comparison, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["position", "method", "position_low", "position_high", "median_standardised_rank"])
        for s in comparison.ranking or []:
            writer.writerow([s.position, s.method, s.low, s.high, s.score])


def write_outputs(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "comparison.csv", "md": out / "comparison.md", "html": out / "comparison.html"}
    write_csv(comparison, paths["csv"])
    paths["md"].write_text(to_markdown(comparison))
    paths["html"].write_text(to_html(comparison))
    if comparison.ranking:
        paths["ranking_csv"] = out / "ranking.csv"
        write_ranking_csv(comparison, paths["ranking_csv"])
    return paths


def log_comparison(
    comparison: Comparison, paths: dict[str, Path], tracking_uri: str | None, settings: dict
) -> str:
    """An MLflow run holding the comparison's files as artifacts; returns its id."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"compare/{comparison.dataset}")
    name = f"compare·{len(comparison.methods)} runs·{comparison.dataset}"
    with mlflow.start_run(
        run_name=name, tags={"evalcam.kind": "comparison", "dataset": comparison.dataset}
    ) as run:
        mlflow.log_params(
            {
                **{k: str(v) for k, v in settings.items()},
                "images": comparison.images,
                "runs": ",".join(comparison.sources.values())[:6000],
            }
        )
        for path in paths.values():
            mlflow.log_artifact(str(path))
        return run.info.run_id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evalcam compare",
        description="Methods x metrics on the images the selected runs share: bootstrap intervals, paired "
        "tests against a reference with Holm correction, optional cross-metric ranking.",
    )
    parser.add_argument("folders", nargs="*", help="run folders (as printed by `python -m evalcam run`)")
    parser.add_argument("--experiment", help="MLflow experiment name to take runs from")
    parser.add_argument(
        "--filter", dest="filter_string", help="MLflow filter, e.g. \"params.`method.name` != 'random'\""
    )
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument(
        "--reference", default=None, help="method to test against (default: the best per metric)"
    )
    parser.add_argument("--rank", action="store_true", help="add the leaderboard across metrics (LATEC)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate after Holm")
    parser.add_argument("--permutations", type=int, default=2000, help="paired-test permutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="comparisons", help="folder for comparison.{csv,md,html}")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the comparison to MLflow")
    args = parser.parse_args(argv)
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha {args.alpha} must lie strictly between 0 and 1, e.g. 0.05")
    runs = [load_folder(f) for f in args.folders]
    if args.experiment or args.filter_string:
        runs += load_mlflow(args.experiment, args.filter_string, args.tracking_uri)
    if not runs:
        raise ValueError("no runs selected; pass run folders, --experiment NAME and/or --filter STRING")
    comparison = compare(
        runs,
        args.reference,
        args.bootstrap,
        args.confidence,
        args.alpha,
        args.permutations,
        args.seed,
        args.rank,
    )
    print(to_text(comparison))
    paths = write_outputs(comparison, args.out)
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    if not args.no_mlflow:
        settings = {
            k: getattr(args, k)
            for k in ("reference", "bootstrap", "confidence", "alpha", "permutations", "seed", "rank")
        }
        run_id = log_comparison(comparison, paths, args.tracking_uri, settings)
        print(f"MLflow comparison run {run_id} (browse with: python -m evalcam ui)")
