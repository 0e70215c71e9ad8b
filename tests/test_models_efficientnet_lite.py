"""EfficientNet-Lite's weights file is read once per process while unchanged; every build owns its tensors."""

from __future__ import annotations

import os

import torch

from evalcam.models import efficientnet_lite, load_model
from evalcam.models.efficientnet_lite import read_state


def test_builds_share_no_tensor_and_keep_the_file_weights():
    first = load_model("efficientnet_lite0")
    second = load_model("efficientnet_lite0")
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(1.0)  # a point that changed its model in place must not change the next point's
    third = load_model("efficientnet_lite0")
    state = torch.load(third.weights, map_location="cpu", weights_only=True)
    assert torch.equal(third.model.fc.weight, state["_fc.weight"])
    assert torch.equal(third.model.conv_stem.weight, state["_conv_stem.weight"])
    ours = {p.data_ptr() for b in (second, third) for p in b.model.parameters()}
    assert not ours & {t.data_ptr() for t in read_state(third.weights).values()}
    second_ptrs = {p.data_ptr() for p in second.model.parameters()}
    assert not second_ptrs & {p.data_ptr() for p in third.model.parameters()}


def test_the_file_is_read_once_and_again_when_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(3)}, path)
    calls = []
    real = torch.load
    monkeypatch.setattr(efficientnet_lite, "_last_state", None)
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert torch.equal(read_state(path)["w"], torch.zeros(3))
    state = read_state(path)
    state["extra"] = torch.ones(1)  # the caller's dict: the cached one keeps its keys
    assert list(read_state(path)) == ["w"] and len(calls) == 1
    torch.save({"w": torch.ones(3)}, path)  # same size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert torch.equal(read_state(path)["w"], torch.ones(3)) and len(calls) == 2
