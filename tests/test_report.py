"""Paper-table experiments and reports: real runs into a temporary MLflow store, then the written table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from evalcam.experiments import available, compose_many, experiments_dir, load_experiment, sweep_overrides
from evalcam.report import collect, write_report

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = available(ROOT / "experiments")


def test_every_paper_table_has_an_experiment_file():
    assert {"gradcam_table1", "pointing_game", "faithfulness", "avg_drop", "deletion_insertion"} <= set(
        SHIPPED
    )
    assert experiments_dir(ROOT / "experiments") == ROOT / "experiments"


@pytest.mark.parametrize("name", SHIPPED)
def test_experiment_profiles_compose_with_hydra(name):
    spec = load_experiment(name, ROOT / "experiments")
    assert {"paper", "lite", "sample"} <= set(spec["profiles"])
    for profile in spec["profiles"]:
        runs = sweep_overrides(spec, profile)
        assert runs, profile
        configs = compose_many(runs)
        # Every run of a table lands in the table's MLflow experiment and measures the table's columns.
        assert {c["experiment"] for c in configs} == {spec["mlflow_experiment"]}
        metric_groups = {column.split("/")[0] for column in spec["columns"]}
        assert all(metric_groups <= set(c["metrics"]) for c in configs)
    # The paper profile evaluates the paper's networks, never the stand-ins.
    assert not any("lite" in str(c["model"]["name"]) for c in compose_many(sweep_overrides(spec, "paper")))


@pytest.mark.parametrize("name", SHIPPED)
def test_columns_name_logged_values_in_their_metrics_direction(name):
    from evalcam.metrics import build_metrics
    from evalcam.report import _better

    spec = load_experiment(name, ROOT / "experiments")
    for profile in spec["profiles"]:
        # The metrics as the profile configures them: a setting (pixel flipping's order, weak_loc's topk)
        # can change a key or its direction.
        config = compose_many(sweep_overrides(spec, profile)[:1])[0]
        built = {m.name: m for m in build_metrics(config["metrics"], "cpu")}
        for column in spec["columns"]:
            metric, key = column.split("/", 1)
            assert key in built[metric].higher_is_better, (profile, column)
            wanted = "higher" if built[metric].higher_is_better[key] else "lower"
            assert _better(spec, column) == wanted, (profile, column)


def test_profile_exclude_drops_combinations_that_cannot_run():
    spec = {
        "mlflow_experiment": "x",
        "profiles": {
            "p": {
                "sweep": {"model": ["a", "b"], "method": ["m", "cam"]},
                "exclude": [["model=a", "method=cam"]],
            }
        },
    }
    points = [p[1:] for p in sweep_overrides(spec, "p")]
    assert points == [["model=a", "method=m"], ["model=b", "method=m"], ["model=b", "method=cam"]]
    # CAM needs a GAP+FC head: torchvision's VGG-16 and AlexNet have none (found by running the profile).
    table1 = load_experiment("gradcam_table1", ROOT / "experiments")
    cam_models = {
        c["model"]["name"]
        for c in compose_many(sweep_overrides(table1, "paper"))
        if c["method"]["name"] == "cam"
    }
    assert cam_models == {"googlenet"}


def test_only_selects_sweep_points_and_dry_run_lists_them(capsys):
    from evalcam.cli import main
    from evalcam.experiments import run_experiment, select_points

    spec = load_experiment("pointing_game", ROOT / "experiments")
    points = sweep_overrides(spec, "paper", ["dataset.limit=2"])
    assert len(points) == 20  # 2 datasets x 2 models x 5 methods
    chosen = select_points(points, ["dataset=voc2007", "model=vgg16"])
    assert len(chosen) == 5 and all("dataset=voc2007" in p and "model=vgg16" in p for p in chosen)
    assert select_points(points, []) == points
    main(["experiment", "pointing_game", "--dry-run", "--only", "model=resnet50", "--only", "method=gradcam"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all(
        "model=resnet50" in line and "method=gradcam" in line for line in printed
    )
    with pytest.raises(ValueError, match="matches none of the 20 sweep points"):
        run_experiment("pointing_game", "paper", [], ROOT / "experiments", only=["model=vgg19"])


@pytest.mark.parametrize("name", SHIPPED)
def test_published_values_carry_a_source_and_are_numbers_or_marked_unverified(name):
    spec = load_experiment(name, ROOT / "experiments")
    source = spec["published"]["source"]
    assert "arXiv:" in source or "TorchRay" in source
    for row in spec["published"]["rows"]:
        if row["values"] is None:
            assert row["note"] == "not verified"
        else:
            assert set(row["values"]) <= set(spec["columns"]) and row["values"]
            assert all(isinstance(v, int | float) for v in row["values"].values())
            # A row with some columns missing says which ones were checked.
            if set(row["values"]) != set(spec["columns"]):
                assert "not verified" in row["note"]


def test_torchray_pointing_values_as_published():
    # Spot checks against TorchRay's docs/pointing.csv (grad_cam, center and rise rows).
    spec = load_experiment("pointing_game", ROOT / "experiments")
    rows = {(r["method"], r["model"], r["dataset"]): r["values"] for r in spec["published"]["rows"]}
    assert rows[("gradcam", "resnet50", "voc2007")] == {
        "pointing/accuracy": 90.4,
        "pointing/difficult_accuracy": 82.3,
    }
    assert rows[("center", "vgg16", "coco2014")] == {
        "pointing/accuracy": 27.8,
        "pointing/difficult_accuracy": 19.5,
    }
    assert rows[("rise", "resnet50", "coco2014")] == {
        "pointing/accuracy": 54.7,
        "pointing/difficult_accuracy": 50.0,
    }


TINY = {
    "name": "tiny_table",
    "title": "Tiny weak-localization table",
    "mlflow_experiment": "evalcam/tiny_table",
    "columns": {
        "weak_loc/top1_loc_error": {"label": "top-1 loc err %", "scale": 100},
        "weak_loc/top5_cls_error": {"label": "top-5 cls err %", "scale": 100},
    },
    "better": "lower",
    "profiles": {
        "sample": {
            "description": "two sample photos",
            "reference_model": "vgg16",
            "overrides": ["dataset=sample", "dataset.limit=2", "metrics=[weak_loc]", "n_examples=0"],
            "sweep": {"model": ["efficientnet_lite0"], "method": ["gradcam", "center"]},
        }
    },
    "published": {
        "source": "made-up test values (arXiv:0000.00000)",
        "dataset": "imagenet_val",
        "rows": [
            {"method": "gradcam", "model": "vgg16", "dataset": "sample",
             "values": {"weak_loc/top1_loc_error": 56.51, "weak_loc/top5_cls_error": 10.89}},
            {"method": "center", "model": "vgg16", "dataset": "sample", "values": None,
             "note": "not verified"},
        ],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from evalcam.experiments import run_experiment

    tmp = tmp_path_factory.mktemp("report")
    (tmp / "experiments").mkdir()
    (tmp / "experiments" / "tiny_table.yaml").write_text(yaml.safe_dump(TINY))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    extra = [f"output_dir={tmp / 'runs'}", f"tracking_uri={uri}", "device=cpu", "progress=false"]
    outcomes = run_experiment("tiny_table", "sample", extra, tmp / "experiments")
    assert all(o.run_id and not o.error for o in outcomes), outcomes
    return tmp, uri, outcomes


def test_report_numbers_equal_the_runs_metrics_and_delta_is_ours_minus_published(tiny_runs):
    from mlflow.tracking import MlflowClient

    tmp, uri, outcomes = tiny_runs
    spec = load_experiment("tiny_table", tmp / "experiments")
    report = collect(spec, uri)
    paths = write_report(report, tmp / "reports")
    assert {p.name for p in paths.values()} == {"tiny_table.md", "tiny_table.html", "tiny_table.csv"}

    client = MlflowClient(tracking_uri=uri)
    lines = list(csv.DictReader(paths["csv"].open()))
    assert len(lines) == 2 * 2  # two runs x two columns
    assert {line["run_id"] for line in lines} == {o.run_id for o in outcomes}
    for line in lines:
        logged = client.get_run(line["run_id"]).data.metrics
        assert float(line["ours"]) == pytest.approx(100 * logged[line["metric"]])
        assert float(line["images"]) == logged["run/images_evaluated"] == 2
        if line["method"] == "gradcam":
            published = TINY["published"]["rows"][0]["values"][line["metric"]]
            assert float(line["published"]) == published
            assert float(line["delta"]) == pytest.approx(float(line["ours"]) - published)
            assert line["published_model"] == "vgg16"
        else:  # unverified published value: no number, no delta
            assert line["published"] == line["delta"] == ""
            assert line["note"] == "not verified"

    markdown = paths["md"].read_text()
    gradcam = next(r for r in report.rows if r.method == "gradcam")
    ours = gradcam.ours["weak_loc/top1_loc_error"]
    delta = ours - 56.51
    low, high = gradcam.ci["weak_loc/top1_loc_error"]
    assert low <= ours <= high  # the run's bootstrap interval, in the paper's units
    row = next(line for line in markdown.splitlines() if line.startswith("| gradcam |"))
    assert f"| {ours:.2f} [{low:.2f}, {high:.2f}] | 56.51 | {delta:+.2f} |" in row
    assert all(
        float(line["ours_ci_low"]) <= float(line["ours"]) <= float(line["ours_ci_high"]) for line in lines
    )
    # Each group states what is significant and where every method ranks across the table's metrics.
    assert "Significance on the 2 images all runs share" in markdown
    assert "Ranking across the table's metrics (LATEC median of standardised ranks" in markdown
    # The header states what was actually used: model, weights file, data and limit, run ids.
    assert "efficientnet_lite0" in markdown and "lite0-" in markdown
    assert "dataset.limit=2" in markdown
    assert all(o.run_id in markdown for o in outcomes)
    assert "<table>" in paths["html"].read_text()


def test_newest_run_of_a_configuration_wins(tiny_runs):
    from mlflow.tracking import MlflowClient

    from evalcam.tracking import log_run_dir

    tmp, uri, first = tiny_runs
    client = MlflowClient(tracking_uri=uri)
    method = {o.run_id: client.get_run(o.run_id).data.tags["method"] for o in first}
    center = next(run_id for run_id, name in method.items() if name == "center")
    newer = log_run_dir(next((tmp / "runs").glob("gradcam__*")), uri)  # same configuration, logged later
    spec = load_experiment("tiny_table", tmp / "experiments")
    assert {r.run_id for r in collect(spec, uri).rows} == {newer, center}
    with pytest.raises(ValueError, match="no experiment"):
        collect({**spec, "mlflow_experiment": "evalcam/absent"}, uri)


def test_proxy_head_scores_a_class_as_the_mean_of_its_imagenet_logits(lite0, photos):
    from evalcam.models.proxy_heads import LABEL_SPACES, proxy_model, unmapped_classes

    proxy = proxy_model("efficientnet_lite0", "voc")
    x = lite0.preprocess([photos["chelsea"]], "cpu")
    with torch.no_grad():
        imagenet, voc = lite0.model(x)[0], proxy.model(x)[0]
    dog, cat = LABEL_SPACES["voc"]["dog"], LABEL_SPACES["voc"]["cat"]
    assert voc.shape == (20,)
    assert float(voc[11]) == pytest.approx(float(imagenet[dog].mean()), abs=1e-4)
    assert float(voc[7]) == pytest.approx(float(imagenet[cat].mean()), abs=1e-4)
    assert int(voc.argmax()) == 7  # the tabby photo is a cat for the VOC-read head too
    assert unmapped_classes("voc") == []
    assert {"giraffe", "fork"} <= set(unmapped_classes("coco")) and "person" not in unmapped_classes("coco")
    assert not math.isnan(float(voc.sum()))
