"""Bootstrap intervals, paired tests, Holm and the ranking against brute-force NumPy references."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from evalcam.metrics.base import Metric
from evalcam.stats.aggregation import BestThreshold, ClassMean, Mean, PairMean
from evalcam.stats.bootstrap import bootstrap, resample_counts, resample_indices, run_intervals
from evalcam.stats.compare import cell_text, compare
from evalcam.stats.ranking import leaderboard, positions
from evalcam.stats.runs import RunRecords
from evalcam.stats.seed import derive_seed, resolve_seeds
from evalcam.stats.tests import holm, paired_test

RESAMPLES = 300


def brute_interval(
    table: pd.DataFrame, statistic, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """One resample at a time: index the rows, recompute the metric the slow obvious way."""
    values = [
        statistic(table.iloc[row].reset_index(drop=True))
        for block in resample_indices(len(table), RESAMPLES, seed)
        for row in block
    ]
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def check(table: pd.DataFrame, aggregation, statistic, seed: int = 3) -> None:
    result = bootstrap(aggregation.contributions(table), aggregation, RESAMPLES, 0.95, seed)
    assert result.value == pytest.approx(statistic(table), abs=1e-12)
    low, high = brute_interval(table, statistic, seed)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)
    assert result.low < result.value < result.high


def test_counts_are_the_indices_as_multiplicities():
    counts = np.concatenate(list(resample_counts(7, 250, seed=5)))
    index = np.concatenate(list(resample_indices(7, 250, seed=5)))
    assert counts.shape == (250, 7) and (counts.sum(1) == 7).all()
    assert (counts == np.stack([np.bincount(row, minlength=7) for row in index])).all()


def test_mean_with_missing_values_scale_and_offset():
    rng = np.random.default_rng(0)
    ok = (rng.random(40) < 0.3).astype(float)
    ok[[3, 17]] = np.nan  # not measured on these images: out of the mean, not zeros
    table = pd.DataFrame({"m.ok": ok})

    def error(t: pd.DataFrame) -> float:
        return 1 - np.nanmean(t["m.ok"].to_numpy(dtype=float))

    check(table, Mean("m.ok", scale=-1.0, offset=1.0), error)


def test_mean_restricted_by_where_column():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"hit": rng.random(50) < 0.6, "fooled": rng.random(50) < 0.5})

    def fooled_rate(t: pd.DataFrame) -> float:
        return float(t.loc[t["fooled"], "hit"].mean())

    check(table, Mean("hit", where="fooled"), fooled_rate)


def test_pair_mean_over_list_cells_skips_unevaluated():
    rng = np.random.default_rng(2)
    cells = [[int(h) for h in rng.integers(-1, 2, size=rng.integers(1, 4))] for _ in range(45)]
    table = pd.DataFrame({"hit": cells})

    def pooled(t: pd.DataFrame) -> float:
        flat = [h for cell in t["hit"] for h in cell if h >= 0]
        return float(np.mean(flat))

    check(table, PairMean("hit", skip_negative=True), pooled)


def test_class_mean_recomputes_per_class_accuracy_in_each_resample():
    rng = np.random.default_rng(3)
    classes = [list(rng.choice(6, size=rng.integers(1, 3), replace=False)) for _ in range(60)]
    hits = [
        [int(rng.random() < 0.2 + 0.12 * c) if rng.random() > 0.1 else -1 for c in row] for row in classes
    ]
    difficult = [[bool(rng.random() < 0.5) for _ in row] for row in classes]
    table = pd.DataFrame({"cls": classes, "hit": hits, "hard": difficult})

    def class_mean(t: pd.DataFrame, only_hard: bool = False) -> float:
        per_class: dict[int, list[int]] = {}
        for row_c, row_h, row_d in zip(t["cls"], t["hit"], t["hard"], strict=True):
            for c, h, d in zip(row_c, row_h, row_d, strict=True):
                if h >= 0 and (d or not only_hard):
                    per_class.setdefault(int(c), []).append(h)
        return float(np.mean([np.mean(v) for v in per_class.values()]))

    check(table, ClassMean("cls", "hit"), class_mean)
    check(table, ClassMean("cls", "hit", only="hard"), lambda t: class_mean(t, True))
    # Not the pooled mean: classes weigh the same whatever their number of pairs.
    pooled = PairMean("hit", skip_negative=True)
    assert pooled.value(pooled.contributions(table).sum(0)[None])[0] != pytest.approx(class_mean(table))


def test_best_threshold_is_chosen_again_inside_each_resample():
    rng = np.random.default_rng(4)
    n, deltas, thresholds = 50, 3, 8
    pairs = rng.integers(1, 3, size=n)
    # Per image, hits per (criterion, threshold) never exceed its pairs; a peaked curve per criterion.
    quality = rng.random((n, deltas, thresholds)) < np.linspace(0.2, 0.7, thresholds)[None, None] * [
        [0.9],
        [0.7],
        [0.5],
    ]
    hits = quality * pairs[:, None, None]
    table = pd.DataFrame({"hits": [h.ravel().tolist() for h in hits], "pairs": pairs})

    def max_acc(t: pd.DataFrame, picked: tuple[int, ...], fixed: int | None = None) -> float:
        h = np.stack([np.reshape(v, (deltas, thresholds)) for v in t["hits"]]).sum(0) / t["pairs"].sum()
        curves = h[list(picked)]
        return float((curves.max(1) if fixed is None else curves[:, fixed]).mean())

    check(table, BestThreshold("hits", "pairs", deltas, (1,)), lambda t: max_acc(t, (1,)))
    check(table, BestThreshold("hits", "pairs", deltas, (0, 1, 2)), lambda t: max_acc(t, (0, 1, 2)))
    check(table, BestThreshold("hits", "pairs", deltas, (1,), fixed=2), lambda t: max_acc(t, (1,), 2))


@pytest.mark.parametrize("kind", ["bernoulli", "normal"])
def test_interval_covers_the_truth_92_to_98_percent(kind):
    rng = np.random.default_rng(11)
    truth = 0.3 if kind == "bernoulli" else 1.5
    covered = 0
    for run in range(400):
        draws = rng.random(150) < truth if kind == "bernoulli" else rng.normal(truth, 2.0, size=150)
        matrix = np.stack([draws.astype(float), np.ones(150)], axis=1)
        result = bootstrap(matrix, Mean("x"), resamples=400, confidence=0.95, seed=run)
        covered += result.low <= truth <= result.high
    assert 0.92 <= covered / 400 <= 0.98


def _paired(rng, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    base = rng.normal(0.5, 0.3, size=n)
    a = base + rng.normal(0, 0.2, size=n) + shift
    b = base + rng.normal(0, 0.2, size=n)
    return np.stack([a, np.ones(n)], 1), np.stack([b, np.ones(n)], 1)


def test_paired_test_rejects_a_planted_difference():
    a, b = _paired(np.random.default_rng(5), 80, shift=0.15)
    result = paired_test(a, b, Mean("x"), permutations=1000, seed=0)
    assert result.difference == pytest.approx((a[:, 0] - b[:, 0]).mean())
    assert result.p_value < 0.01
    # A planted difference in per-class means, through the same machinery.
    rng = np.random.default_rng(6)
    classes = [[int(c)] for c in rng.integers(0, 4, 120)]
    table = pd.DataFrame(
        {
            "cls": classes * 2,
            "hit": [[int(rng.random() < 0.8)] for _ in classes]
            + [[int(rng.random() < 0.4)] for _ in classes],
        }
    )
    x = ClassMean("cls", "hit").contributions(table)
    assert paired_test(x[:120], x[120:], ClassMean("cls", "hit"), 1000, 0).p_value < 0.01


def test_paired_test_false_positive_rate_near_alpha():
    rng = np.random.default_rng(7)
    rejected = sum(
        paired_test(*_paired(rng, 40, shift=0.0), Mean("x"), permutations=200, seed=i).p_value < 0.05
        for i in range(300)
    )
    assert 0.02 <= rejected / 300 <= 0.09


def test_holm_matches_hand_computation():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.2) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_positions_median_of_standardised_ranks():
    # 3 methods x 3 metrics; metric 2 is lower-is-better. Ranks: A 1,1,3  B 2,2,1  C 3,3,2.
    values = np.array([[0.9, 0.8, 0.5], [0.5, 0.6, 0.1], [0.1, 0.2, 0.3]])
    place, score = positions(values, [True, True, False])
    assert score.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert place.tolist() == [1, 2, 3]
    # A metric measured by only some methods is standardised over those.
    values[2, 0] = np.nan
    assert positions(values, [True, True, False])[0].tolist() == [1, 2, 3]


def test_leaderboard_intervals_widen_with_fewer_images():
    def board(n: int) -> list:
        # Exact hit rates 0.70, 0.65 and 0.30 on both metrics, hits spread over the images.
        rng = np.random.default_rng(8)
        mats = []
        for rate in (0.70, 0.65, 0.30):
            hits = np.zeros(n)
            hits[: round(rate * n)] = 1
            mats.append([np.stack([rng.permutation(hits), np.ones(n)], 1) for _ in range(2)])
        return leaderboard(["a", "b", "c"], mats, [Mean("x"), Mean("y")], [True, True], 300, 0.95, 0)

    small, large = board(40), board(4000)
    assert [s.method for s in small] == [s.method for s in large] == ["a", "b", "c"]
    assert [str(s) for s in large] == ["a 1 [1–1]", "b 2 [2–2]", "c 3 [3–3]"]
    spans = {s.method: (s.low, s.high) for s in small}
    assert spans["a"] == (1, 2) and spans["b"] == (1, 2)  # 0.70 vs 0.65 on 40 images is not settled
    assert spans["c"] == (3, 3)


def test_derive_seed_and_resolve_seeds():
    assert derive_seed(0, "method") == derive_seed(0, "method")
    assert len({derive_seed(0, p) for p in ("method", "robustness", "sanity", "bootstrap", "subset")}) == 5
    assert derive_seed(1, "method") != derive_seed(0, "method")
    config = {
        "seed": 4,
        "method": {"name": "rise", "params": {"seed": None}},
        "metrics": {"robustness": {"seed": 7}},
        "dataset": {"subset_seed": "auto"},
        "stats": {"seed": None},
    }
    out = resolve_seeds(config)
    assert out["method"]["params"]["seed"] == derive_seed(4, "method")
    assert out["metrics"]["robustness"]["seed"] == 7  # set explicitly: kept
    assert out["dataset"]["subset_seed"] == derive_seed(4, "subset")
    assert out["stats"]["seed"] == derive_seed(4, "bootstrap")
    assert config["method"]["params"]["seed"] is None  # the caller's config is not modified
    with pytest.raises(ValueError, match="seed must be a non-negative integer; got seed=-1"):
        resolve_seeds({"seed": -1})


def test_bad_settings_are_one_line_errors():
    matrix = np.ones((5, 2))
    with pytest.raises(ValueError, match=r"stats.confidence=1.5 must lie strictly between 0 and 1"):
        bootstrap(matrix, Mean("x"), 100, 1.5)
    with pytest.raises(ValueError, match=r"stats.bootstrap=0 must be >= 1"):
        bootstrap(matrix, Mean("x"), 0, 0.95)


class _Convention(Metric):
    """A metric following the shared convention only: ``higher_is_better`` and ``<name>.<key>`` records."""

    name = "toy"
    higher_is_better: ClassVar[dict[str, bool]] = {"score": True}


def test_a_metric_following_the_convention_gets_intervals_for_free(caplog):
    rng = np.random.default_rng(9)
    scores = rng.random(30)
    table = pd.DataFrame(
        {"image_id": [f"i{k:02d}" for k in range(32)], "status": ["ok"] * 30 + ["skipped"] * 2}
    ).assign(**{"toy.score": [*scores, np.nan, np.nan]})
    values = {"toy/score": float(scores.mean()), "toy/images": 30.0}
    out = run_intervals([_Convention()], table, values, resamples=200, confidence=0.9, seed=1)
    expected = bootstrap(np.stack([scores, np.ones(30)], 1), Mean("toy.score"), 200, 0.9, 1)
    assert out == pytest.approx({"toy/score/ci_low": expected.low, "toy/score/ci_high": expected.high})
    # Records that do not reproduce the logged value give no interval (and say so), never a wrong one.
    with caplog.at_level("WARNING"):
        assert run_intervals([_Convention()], table, {"toy/score": 0.99}, 200, 0.9, 1) == {}
    assert "toy/score: per-image records give" in caplog.text


def _records(label: str, acc: np.ndarray, cls: np.ndarray) -> RunRecords:
    ids = [f"img{k:03d}" for k in range(len(acc))]
    table = pd.DataFrame({"image_id": ids, "m.acc": acc, "m.cls": cls}).set_index("image_id", drop=False)
    return RunRecords(
        label, label, "toy", "sample", label, {"m/acc": float(acc.mean()), "m/cls": float(cls.mean())}, table,
        {"m/acc": Mean("m.acc"), "m/cls": Mean("m.cls")}, {"m/acc": True, "m/cls": False},
    )  # fmt: skip


def test_compare_marks_a_planted_difference_and_ranks_on_informative_metrics():
    rng = np.random.default_rng(10)
    cls = (rng.random(120) < 0.3).astype(float)  # the network's error: the same records in every run
    good = (rng.random(120) < 0.8).astype(float)
    close = good.copy()  # differs on four images, two each way: the same accuracy
    close[np.flatnonzero(good == 1)[:2]] = 0
    close[np.flatnonzero(good == 0)[:2]] = 1
    close[np.flatnonzero(good == 1)[2]] = 0  # and one worse, so it ranks second
    bad = (rng.random(120) < 0.3).astype(float)
    runs = [_records("good", good, cls), _records("close", close, cls), _records("bad", bad, cls)]
    result = compare(runs, resamples=300, permutations=500, rank=True)
    assert result.images == 120 and result.references["m/acc"] == "good"
    assert result.significant("bad", "m/acc") and not result.significant("close", "m/acc")
    assert cell_text(result, "bad", "m/acc").endswith(" *") and cell_text(result, "good", "m/acc").endswith(
        " ref"
    )
    assert not any(result.significant(m, "m/cls") for m in result.methods)  # identical records: no difference
    # Ranked on m/acc alone (m/cls ties everyone), so the order is good, close, bad.
    assert [s.method for s in result.ranking] == ["good", "close", "bad"]
    assert result.ranking[2].low == 3


def test_intervals_print_unbounded_scores_in_scientific_notation():
    from evalcam.stats.bootstrap import format_interval

    assert format_interval(47.5, 38.125, 57.0, 1) == "47.5 [38.1, 57.0]"
    # Relative stabilities reach 1e31: fixed point would print 32 digits.
    assert format_interval(8.58e31, 0.0061, 1.7e32, 3) == "8.580e+31 [0.006, 1.700e+32]"
    assert format_interval(float("inf"), None, None, 2) == "inf"


def test_methods_with_identical_records_get_identical_verdicts():
    """CAM and Grad-CAM on a GAP head give the same maps: their paired tests against the best must agree
    exactly, whatever the Monte-Carlo draws (one stream of swaps per metric)."""
    rng = np.random.default_rng(3)
    cls = (rng.random(60) < 0.3).astype(float)
    best = (rng.random(60) < 0.75).astype(float)
    twin = (rng.random(60) < 0.5).astype(float)
    runs = [_records("best", best, cls), _records("cam", twin, cls), _records("gradcam", twin.copy(), cls)]
    for seed in range(5):
        result = compare(runs, seed=seed)
        cam, gradcam = result.cells[("cam", "m/acc")], result.cells[("gradcam", "m/acc")]
        assert cam.p_value == gradcam.p_value and cam.p_holm == gradcam.p_holm


def test_every_compared_value_of_a_run_gets_its_interval(tmp_path):
    """Each metric's per-image records must reproduce what it logs, or the run gets no interval (and only a
    warning): a unit mismatch (records in percent, value as a fraction) would silently drop the CIs."""
    import json

    from conftest import config_for

    from evalcam.runner import run

    metrics = [
        "avg_drop", "weak_loc", "maxboxacc", "energy_pointing", "sparseness", "complexity",
        "effective_complexity", "relevance_mass", "mask_auc",
    ]  # fmt: skip
    result = run(
        config_for(
            tmp_path, "dataset.limit=5", f"metrics=[{','.join(metrics)}]",
            "metrics.relevance_mass.boxes_as_masks=true", "metrics.mask_auc.boxes_as_masks=true",
        )
    )  # fmt: skip
    summary = json.loads((result.run_dir / "summary.json").read_text())
    logged = summary["metrics"]
    compared = [k for k in summary["higher_is_better"] if np.isfinite(logged.get(k, float("nan")))]
    assert {k.split("/")[0] for k in compared} == set(metrics)
    missing = [k for k in compared if f"{k}/ci_low" not in logged]
    assert not missing, f"no interval for {missing}"
    for key in compared:
        assert logged[f"{key}/ci_low"] <= logged[key] + 1e-9 <= logged[f"{key}/ci_high"] + 2e-9
