"""What users compare, printed (issue 19, item 5) and reruns that leave a finished run as it was (item 7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
from conftest import cli, config_for

from evalcam.cli import main
from evalcam.naming import run_name
from evalcam.runner import run
from evalcam.sweep_table import comparison_table, summaries_of, to_markdown


def test_run_names_carry_what_sets_two_runs_apart(tmp_path):
    plain = config_for(tmp_path)
    assert run_name(plain) == "gradcam·efficientnet_lite0·sample"
    changed = config_for(
        tmp_path,
        "method=rise",
        "method.params.num_masks=500",
        "dataset.limit=4",
        "metrics.weak_loc.threshold=0.3",
        "model.target_layer=blocks.15",
    )
    assert run_name(changed) == (
        "rise·efficientnet_lite0·sample (limit=4, layer=blocks.15, num_masks=500, weak_loc.threshold=0.3)"
    )


def test_table_rows_are_labelled_by_what_differs():
    summaries = [
        {
            "run_name": "gradcam·lite0·voc2007 (limit=3)",
            "metrics": {"pointing/accuracy": 0.5, "run/seconds": 9},
        },
        {
            "run_name": "center·lite0·voc2007 (limit=3)",
            "metrics": {"pointing/accuracy": 0.25, "pointing/images": 3},
        },
    ]
    table = comparison_table(summaries)
    assert list(table.index) == ["gradcam (limit=3)", "center (limit=3)"]
    assert list(table.columns) == ["pointing/accuracy"]  # bookkeeping and counts are left out
    assert to_markdown(table).splitlines()[2] == "| gradcam (limit=3) | 0.5000 |"


def test_table_shows_the_keys_a_runs_own_settings_log(tmp_path):
    # weak_loc.topk=3 logs top3_* instead of top5_*: the columns follow the run's metric, not its class.
    results = [run(config_for(tmp_path, "dataset.limit=2", f"method={m}", "metrics.weak_loc.topk=3"))
               for m in ("gradcam", "center")]  # fmt: skip
    table = comparison_table(summaries_of([r.run_dir for r in results]))
    logged = [k for k in results[0].metrics if k.startswith("weak_loc/") and k.endswith("_error")]
    expected = [f"weak_loc/top{k}_{what}_error" for k in (1, 3) for what in ("loc", "cls")]
    assert sorted(logged) == sorted(expected)
    assert sorted(table.columns) == sorted(logged)  # every logged value; counts and CIs left out
    for label, result in zip(table.index, results, strict=True):
        assert table.loc[label, "weak_loc/top3_loc_error"] == result.metrics["weak_loc/top3_loc_error"]


def test_sweep_prints_and_saves_the_methods_by_metrics_table(tmp_path):
    done = cli(
        "run", "-m", "method=gradcam,center", "dataset.limit=2", f"output_dir={tmp_path}", "mlflow=false",
        "progress=false", "n_examples=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    saved = list(tmp_path.glob("hydra/multirun_*/comparison.csv"))
    assert len(saved) == 1
    table = pd.read_csv(saved[0], index_col="run")
    assert list(table.index) == ["gradcam (limit=2)", "center (limit=2)"]
    for label, method in (("gradcam (limit=2)", "gradcam"), ("center (limit=2)", "center")):
        (summary_path,) = tmp_path.glob(f"{method}__*/summary.json")
        logged = json.loads(summary_path.read_text())["metrics"]
        assert table.loc[label, "weak_loc/top1_loc_error"] == logged["weak_loc/top1_loc_error"]
        # Each value travels with the bootstrap interval the run logged, in the CSV and the printed cell.
        low, high = logged["weak_loc/top1_loc_error/ci_low"], logged["weak_loc/top1_loc_error/ci_high"]
        assert table.loc[label, "weak_loc/top1_loc_error/ci_low"] == low
        assert table.loc[label, "weak_loc/top1_loc_error/ci_high"] == high
        value = logged["weak_loc/top1_loc_error"]
        (line,) = [row for row in done.stdout.splitlines() if row.startswith(f"| {label} |")]
        assert f"| {value:.4f} [{low:.4f}, {high:.4f}] |" in line
    # The printed table is the saved Markdown file.
    assert saved[0].with_suffix(".md").read_text().strip() in done.stdout


def test_experiment_ends_with_the_table_beside_its_runs(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "tiny.yaml").write_text(
        "name: tiny\nmlflow_experiment: evalcam/tiny\ncolumns: {weak_loc/top1_loc_error: {label: e}}\n"
        "published: {source: none, rows: []}\n"
        "profiles:\n  sample:\n    overrides: [dataset=sample, dataset.limit=2, n_examples=0]\n"
        "    sweep:\n      method: [gradcam, center]\n"
    )
    main(["experiment", "tiny", "--profile", "sample", "--experiments-dir", str(tmp_path / "exp"),
          f"output_dir={tmp_path / 'runs'}", "mlflow=false", "progress=false"])  # fmt: skip
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "runs" / "tiny.sample.comparison.csv", index_col="run")
    assert list(table.index) == ["gradcam (limit=2)", "center (limit=2)"]
    assert "| gradcam (limit=2) |" in out and "2 of 2 runs done" in out


def test_rerunning_a_finished_run_keeps_its_seconds_and_its_mlflow_table(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = config_for(tmp_path / "runs", "dataset.limit=2", "mlflow=true", f"tracking_uri={uri}")
    first = run(config)
    again = run(config)
    assert again.metrics["run/seconds"] == first.metrics["run/seconds"]
    assert again.mlflow_run_id == first.mlflow_run_id
    mlflow.set_tracking_uri(uri)
    logged = mlflow.get_run(first.mlflow_run_id).data.metrics["run/seconds"]
    assert math.isclose(logged, first.metrics["run/seconds"])
    # log_table appends: had the rerun logged it again the table would hold 4 rows.
    table = mlflow.load_table("per_image_table.json", run_ids=[first.mlflow_run_id])
    assert len(table) == 2
    assert Path(first.run_dir).name == Path(again.run_dir).name


def test_run_names_name_the_seed_once_not_each_derived_sub_seed(tmp_path):
    from evalcam.stats.seed import resolve_seeds

    metrics = "metrics=[weak_loc,focus,emprt]"
    plain = resolve_seeds(config_for(tmp_path, "method=rise", metrics))
    assert plain["method"]["params"]["seed"] is not None  # derived from seed=0, not left null
    assert run_name(plain) == "rise·efficientnet_lite0·sample"
    other = resolve_seeds(config_for(tmp_path, "method=rise", metrics, "seed=3"))
    assert other["method"]["params"]["seed"] != plain["method"]["params"]["seed"]
    assert run_name(other) == "rise·efficientnet_lite0·sample (seed=3)"
    # A sub-seed set by hand is not the derived one: it is named.
    pinned = resolve_seeds(config_for(tmp_path, "method=rise", metrics, "metrics.focus.seed=5"))
    assert run_name(pinned) == "rise·efficientnet_lite0·sample (focus.seed=5)"


def test_where_a_metric_keeps_shared_results_does_not_name_the_run(tmp_path):
    metrics = "metrics=[faithfulness,infidelity,faithfulness_correlation]"
    config = config_for(tmp_path, metrics)
    assert config["metrics"]["infidelity"]["cache_dir"] == str(tmp_path / "cache" / "infidelity")
    assert run_name(config) == "gradcam·efficientnet_lite0·sample"
    assert run_name(config_for(tmp_path, metrics, "metrics.infidelity.stride=8")) == (
        "gradcam·efficientnet_lite0·sample (infidelity.stride=8)"
    )
