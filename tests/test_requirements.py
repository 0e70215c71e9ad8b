"""A run refuses what it cannot measure (issue 19, item 1): label spaces, boxes, the proxy head.

The two regression cases of the issue run the CLI on ../shared/data: VOC labels on an ImageNet head used
to report ``pointing/accuracy 0.5108`` (VOC class 11 "dog" read as ImageNet class 11, a songbird), and ILSVRC
val without ``dataset.annotations=`` used to report ``top1_loc_error 1.0000``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import ROOT, cli, config_for, last_line, shared_subdir

from evalcam.data import build_dataset
from evalcam.metrics import METRICS
from evalcam.metrics.deletion_insertion import Deletion
from evalcam.metrics.pointing import PointingGame
from evalcam.models.proxy_heads import LABEL_SPACES, apply_head
from evalcam.requirements import check_requirements, model_label_space, needs_table
from evalcam.runner import run


def test_readme_table_is_what_the_metrics_declare():
    readme = (ROOT / "README.md").read_text()
    assert needs_table(METRICS) in readme


def test_each_metric_declares_its_needs():
    assert METRICS["pointing"].needs.labels and METRICS["pointing"].needs.regions
    assert METRICS["weak_loc"].needs.boxes and METRICS["maxboxacc"].needs.boxes
    assert not METRICS["deletion"].needs.labels and not METRICS["avg_drop"].needs.boxes


def fake_dataset(**kw) -> SimpleNamespace:
    base = {
        "name": "toy",
        "has_masks": False,
        "has_boxes": True,
        "label_space": "voc",
        "class_names": ["a"] * 20,
    }
    return SimpleNamespace(**{**base, **kw})


def fake_bundle(categories: list[str], classifier: str | None = "fc") -> SimpleNamespace:
    return SimpleNamespace(name="net", categories=categories, classifier=classifier)


def test_label_spaces_are_recognised_by_their_names():
    assert model_label_space(list(LABEL_SPACES["voc"])) == "voc"
    assert model_label_space(list(LABEL_SPACES["coco"])) == "coco"
    assert model_label_space([f"class {i}" for i in range(1000)]) == "imagenet"
    assert model_label_space(["0", "1", "2"]) is None


def test_imagenet_head_on_voc_labels_names_the_proxy_head_and_the_command():
    with pytest.raises(ValueError) as err:
        check_requirements(
            [PointingGame()], fake_dataset(), fake_bundle([str(i) for i in range(1000)]), ["dataset=voc2007"]
        )
    line = str(err.value)
    assert "\n" not in line
    assert "model.head=proxy" in line and "proxy_heads" in line
    assert line.endswith("python -m evalcam run dataset=voc2007 model.head=proxy")


def test_a_model_without_a_linear_head_is_told_to_bring_voc_weights():
    with pytest.raises(ValueError, match=r"no GAP\+FC classifier.*model.weights=PATH"):
        check_requirements([PointingGame()], fake_dataset(), fake_bundle(["x"] * 1000, classifier=None), [])


def test_unknown_label_space_with_another_class_count_is_refused():
    with pytest.raises(ValueError, match="score the 20 classes of toy, but model net has 3 outputs"):
        check_requirements(
            [PointingGame()], fake_dataset(label_space="other"), fake_bundle(["0", "1", "2"]), []
        )


def test_metrics_of_the_predicted_class_need_no_labels():
    # Deletion explains the predicted class only: VOC images on an ImageNet head are a valid set-up.
    check_requirements([Deletion()], fake_dataset(), fake_bundle(["x"] * 1000), [])


def test_box_metric_without_boxes_says_which_key_gives_them():
    dataset = fake_dataset(
        label_space="imagenet", has_boxes=False, boxes_hint="pass dataset.annotations=PATH"
    )
    with pytest.raises(ValueError, match=r"weak_loc need bounding boxes.*pass dataset.annotations=PATH"):
        check_requirements([METRICS["weak_loc"]()], dataset, fake_bundle(["x"] * 1000), [])


def test_proxy_head_is_refused_where_it_has_no_meaning(lite0):
    with pytest.raises(ValueError, match=r"already uses imagenet classes; drop model\.head=proxy"):
        apply_head("proxy", lite0, "imagenet")
    with pytest.raises(ValueError, match=r"model\.head=crop is not a head; use model\.head=proxy"):
        apply_head("crop", lite0, "voc")
    assert apply_head(None, lite0, "voc") is lite0


def test_voc_on_an_imagenet_head_stops_with_the_proxy_command(shared_data, tmp_path):
    root = shared_subdir("voc2007")
    done = cli(
        "run",
        "dataset=voc2007",
        f"dataset.root={root}",
        "metrics=[pointing]",
        "dataset.limit=5",
        f"output_dir={tmp_path}",
        "mlflow=false",
    )
    assert done.returncode == 1
    line = last_line(done)
    assert line.startswith("evalcam: error: metric(s) pointing score the voc classes of voc2007")
    assert line.endswith(
        f"python -m evalcam run dataset=voc2007 dataset.root={root} 'metrics=[pointing]' dataset.limit=5 "
        f"output_dir={tmp_path} mlflow=false model.head=proxy"
    )
    assert not list(tmp_path.glob("*/per_image/part-*"))  # refused before any work


def test_voc_with_the_proxy_head_scores_voc_classes_and_says_so(shared_data, tmp_path):
    root = shared_subdir("voc2007")
    config = config_for(
        tmp_path,
        "dataset=voc2007",
        f"dataset.root={root}",
        "metrics=[pointing]",
        "dataset.limit=3",
        "model.head=proxy",
    )
    result = run(config)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["run_name"] == "gradcam·efficientnet_lite0·voc2007 (split=test, limit=3, head=proxy)"
    assert summary["tags"]["model_head"] == "proxy"
    assert summary["tags"]["model"] == "efficientnet_lite0+voc_proxy"
    # Image 000001 is a dog and a person (VOC 11, 14): with VOC's 20 classes on the head, every labelled
    # class of the 3 images is one (image, class) pair of the game, played or skipped as all-difficult.
    dataset = build_dataset("voc2007", root=root, limit=3)
    pairs = sum(len(dataset[i].labels) for i in range(3))
    assert result.metrics["pointing/evaluated"] + result.metrics["pointing/skipped"] == pairs
    assert 0.0 <= result.metrics["pointing/accuracy"] <= 1.0


def test_ilsvrc_without_annotations_stops_instead_of_a_loc_error_of_one(shared_data, tmp_path):
    root = shared_subdir("imagenet_val_227/ILSVRC2012_VAL_SET")
    done = cli(
        "run",
        "dataset=imagenet_val",
        f"dataset.root={root}",
        "dataset.limit=4",
        f"output_dir={tmp_path}",
        "mlflow=false",
        env={"EVALCAM_IMAGENET_ANNOTATIONS": ""},
    )
    assert done.returncode == 1
    line = last_line(done)
    assert line.startswith(
        "evalcam: error: metric(s) weak_loc need bounding boxes, but dataset imagenet_val has"
    )
    assert "dataset.annotations=PATH" in line and "$EVALCAM_IMAGENET_ANNOTATIONS" in line
    assert "top1_loc_error" not in done.stdout
