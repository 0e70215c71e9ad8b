"""The README's real-data block runs as written on ../shared/data (issue 19, item 8).

Its commands are parsed from the README (the block after the ``real-data-example`` marker), ``$DATA``
is pointed at the shared subsets and ``dataset.limit`` made small; each command then goes through the
runner entry with exactly its overrides, so a key the block forgets (root, annotations, head) fails here.
"""

from __future__ import annotations

import math
import shlex

import pytest
from conftest import ROOT, config_for

from evalcam.data import build_dataset
from evalcam.runner import run

MARKER = "<!-- real-data-example"
LIMIT = 2


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.startswith("python -m evalcam run")]


def test_the_block_covers_imagenet_voc_and_coco_with_their_keys():
    commands = readme_commands()
    datasets = [next(a for a in c if a.startswith("dataset=")) for c in commands]
    assert datasets == ["dataset=imagenet_val", "dataset=voc2007", "dataset=coco2017"]
    assert all(any(a.startswith("dataset.root=$DATA/") for a in c) for c in commands)
    assert any(a.startswith("dataset.annotations=$DATA/") for a in commands[0])
    assert all("model.head=proxy" in c for c in commands[1:])


@pytest.mark.parametrize("index", [0, 1, 2], ids=["imagenet_val", "voc2007", "coco2017"])
def test_each_readme_command_runs_on_the_shared_data(shared_data, tmp_path, index):
    args = readme_commands()[index][4:]  # after "python -m evalcam run"
    overrides = [a.replace("$DATA", str(shared_data)) for a in args if not a.startswith("dataset.limit=")]
    result = run(config_for(tmp_path, *overrides, f"dataset.limit={LIMIT}"))
    assert result.metrics["run/images_evaluated"] == LIMIT
    main = "weak_loc/top1_loc_error" if index == 0 else "pointing/accuracy"
    assert 0.0 <= result.metrics[main] <= 1.0
    assert all(not math.isnan(v) for v in result.metrics.values())
    if index == 0:  # the block's annotations give every image its boxes (without them the run stops)
        config = config_for(tmp_path, *overrides, f"dataset.limit={LIMIT}")["dataset"]
        dataset = build_dataset("imagenet_val", **{k: v for k, v in config.items() if k != "name"})
        assert dataset.has_boxes and all(dataset[i].boxes for i in range(LIMIT))
