"""Intervals logged by real runs of the sample set, one seed, and ``python -m evalcam compare`` on them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import conftest
import pandas as pd
import pytest
import yaml

from evalcam.cli import main as cli_main
from evalcam.metrics import build_metrics
from evalcam.runner import run
from evalcam.stats.bootstrap import run_intervals
from evalcam.stats.seed import derive_seed

METRICS = "metrics=[weak_loc,pointing,maxboxacc]"


def make_config(tmp: Path, *overrides: str) -> dict:
    return conftest.make_config(tmp, "n_examples=0", "dataset.limit=5", "stats.bootstrap=400", *overrides)


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    # MaxBoxAcc (the slow metric) in one run only: the others show it as a gap.
    results = {"gradcam": run(make_config(tmp, "method=gradcam", METRICS))}
    for method in ("center", "random"):
        results[method] = run(make_config(tmp, f"method={method}", "metrics=[weak_loc,pointing]"))
    return tmp, results


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_runs_log_an_interval_beside_every_value(sample_runs):
    from mlflow.tracking import MlflowClient

    tmp, results = sample_runs
    result = results["gradcam"]
    values = summary(result.run_dir)["metrics"]
    for key in (
        "weak_loc/top1_loc_error",
        "pointing/accuracy",
        "maxboxacc/max_box_acc",
        "maxboxacc/max_box_acc_v2",
    ):
        assert values[f"{key}/ci_low"] <= values[key] <= values[f"{key}/ci_high"], key
    assert values["weak_loc/top1_loc_error/ci_high"] > values["weak_loc/top1_loc_error/ci_low"]
    assert "weak_loc/images/ci_low" not in values  # counts have no interval
    logged = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").get_run(result.mlflow_run_id).data.metrics
    assert logged["pointing/accuracy/ci_low"] == pytest.approx(values["pointing/accuracy/ci_low"])
    # The logged interval is the bootstrap of the stored per-image records with the run's derived seed.
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    metrics = build_metrics(config["metrics"], "cpu")
    table = pd.read_parquet(result.run_dir / "per_image.parquet")
    again = run_intervals(metrics, table, values, 400, 0.95, config["stats"]["seed"])
    assert again == pytest.approx({k: v for k, v in values.items() if k.endswith(("/ci_low", "/ci_high"))})


def test_same_seed_same_numbers_other_seed_changes_only_what_is_random(tmp_path):
    def random_run(folder: str, *overrides: str):
        return run(
            make_config(
                tmp_path / folder, "method=random", "metrics=[weak_loc,pointing]", "mlflow=false", *overrides
            )
        )

    first, again, other = random_run("a"), random_run("b"), random_run("c", "seed=1")
    values = [
        {k: v for k, v in r.metrics.items() if k not in ("run/seconds", "run/wall_seconds")}
        for r in (first, again, other)
    ]
    assert values[0] == values[1]  # intervals included
    assert summary(first.run_dir)["params"]["seed"] == "0" and summary(other.run_dir)["params"]["seed"] == "1"
    assert other.run_dir.name != first.run_dir.name  # another seed is another result, not a resume
    before = pd.read_parquet(first.run_dir / "per_image.parquet")
    after = pd.read_parquet(other.run_dir / "per_image.parquet")
    # The network is not random: predictions and classification errors stay; the random maps change.
    assert (before["pred_top5"].map(list) == after["pred_top5"].map(list)).all()
    assert values[2]["weak_loc/top1_cls_error"] == values[0]["weak_loc/top1_cls_error"]
    # The random baseline's blobs move with the seed: their argmax points and their boxes.
    points = [t["pointing.points"].map(lambda cell: [list(p) for p in cell]) for t in (before, after)]
    assert not (points[0] == points[1]).all()
    assert not (before["weak_loc.top1_box"].map(list) == after["weak_loc.top1_box"].map(list)).all()
    # Every random part drew from the run's seed (saved resolved in config.yaml).
    for result, seed in ((first, 0), (other, 1)):
        config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
        assert config["method"]["params"]["seed"] == derive_seed(seed, "method")
        assert config["stats"]["seed"] == derive_seed(seed, "bootstrap")


def test_compare_mlflow_runs_table_csv_and_artifacts_agree(sample_runs, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    tmp, results = sample_runs
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp_path / "cmp"
    argv = ["compare", "--experiment", "sample/efficientnet_lite0", "--tracking-uri", uri]
    cli_main([*argv, "--rank", "--out", str(out), "--bootstrap", "300", "--permutations", "500"])
    printed = capsys.readouterr().out
    assert "5 shared images of sample" in printed
    rows = read_csv(out / "comparison.csv")
    assert {r["method"] for r in rows} == {"gradcam", "center", "random"}
    markdown = (out / "comparison.md").read_text()
    assert "maxboxacc/max_box_acc: not measured by center, random (— in the table)" in printed
    for row in rows:
        logged = summary(results[row["method"]].run_dir)["metrics"].get(row["metric"])
        if logged is None:  # a metric the run did not measure: a gap, never a number
            assert row["metric"].startswith("maxboxacc/") and row["value"] == row["p_value"] == ""
            continue
        # Every run evaluated the same 5 images: the compared value is the run's own logged value.
        assert float(row["value"]) == pytest.approx(logged)
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
        cell = f"{float(row['value']):.4f} [{float(row['ci_low']):.4f}, {float(row['ci_high']):.4f}]"
        assert cell in markdown and cell in printed
    refs = [r for r in rows if r["metric"] == "pointing/accuracy"]
    best = max(refs, key=lambda r: float(r["value"]))
    assert all(r["reference"] == best["method"] for r in refs)
    assert all(r["p_holm"] for r in refs if r["method"] != best["method"])
    ranking = read_csv(out / "ranking.csv")
    assert sorted(int(r["position"]) for r in ranking) in ([1, 2, 3], [1, 1, 3], [1, 2, 2], [1, 1, 1])
    assert all(int(r["position_low"]) <= int(r["position"]) <= int(r["position_high"]) for r in ranking)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("compare/sample")
    (comparison,) = client.search_runs([experiment.experiment_id])
    names = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert {"comparison.csv", "comparison.md", "comparison.html", "ranking.csv"} <= names
    fetched = client.download_artifacts(comparison.info.run_id, "comparison.csv", str(tmp_path))
    assert Path(fetched).read_text() == (out / "comparison.csv").read_text()
    # A second comparison does not pick up the comparison run as a run to compare.
    cli_main(
        [*argv, "--reference", "center", "--out", str(tmp_path / "again"), "--no-mlflow", "--bootstrap", "50"]
    )
    again = read_csv(tmp_path / "again" / "comparison.csv")
    assert len(again) == len(rows)
    assert {r["reference"] for r in again if not r["metric"].startswith("maxboxacc/")} == {"center"}


def _copy(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def _error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli_main(["compare", "--no-mlflow", *argv])
    message = str(exc.value.code)
    assert message.startswith("evalcam: error: ") and "\n" not in message
    return message


def test_bad_input_is_one_line_or_a_marked_gap(sample_runs, tmp_path, capsys):
    _, results = sample_runs
    gradcam, center = results["gradcam"].run_dir, results["center"].run_dir
    (tmp_path / "empty").mkdir()
    assert "is not a finished evalcam run folder (no summary.json, config.yaml, per_image.parquet)" in _error(
        [str(tmp_path / "empty"), str(gradcam)]
    )

    elsewhere = _copy(center, tmp_path / "elsewhere")
    table = pd.read_parquet(elsewhere / "per_image.parquet")
    table["image_id"] = "other-" + table["image_id"]
    table.to_parquet(elsewhere / "per_image.parquet")
    assert "the runs share no evaluated images" in _error([str(gradcam), str(elsewhere)])

    voc = _copy(center, tmp_path / "voc")
    config = yaml.safe_load((voc / "config.yaml").read_text())
    config["dataset"]["name"] = "voc2007"
    (voc / "config.yaml").write_text(yaml.safe_dump(config))
    assert "runs are on different datasets (sample: 1 run(s), voc2007: 1 run(s))" in _error(
        [str(gradcam), str(voc)]
    )

    assert "compare needs at least two runs; got 1" in _error([str(gradcam)])
    uri = f"sqlite:///{sample_runs[0] / 'mlflow.db'}"
    assert "MLflow cannot search with filter 'params.x =='" in _error(
        ["--filter", "params.x ==", "--tracking-uri", uri]
    )
    assert "--reference 'gradcampp' names 0 of the runs" in _error(
        [str(gradcam), str(center), "--reference", "gradcampp"]
    )

    partial = _copy(center, tmp_path / "partial")
    config = yaml.safe_load((partial / "config.yaml").read_text())
    del config["metrics"]["pointing"]
    (partial / "config.yaml").write_text(yaml.safe_dump(config))
    cli_main(
        [
            "compare",
            "--no-mlflow",
            "--bootstrap",
            "50",
            "--out",
            str(tmp_path / "gap"),
            str(gradcam),
            str(partial),
        ]
    )
    printed = capsys.readouterr().out
    assert "pointing/accuracy: not measured by center (— in the table)" in printed
    rows = {(r["method"], r["metric"]): r for r in read_csv(tmp_path / "gap" / "comparison.csv")}
    assert rows[("center", "pointing/accuracy")]["value"] == ""
    assert rows[("gradcam", "pointing/accuracy")]["value"] != ""
