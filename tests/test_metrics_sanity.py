"""Cascading model-parameter randomization (Adebayo et al. 2018) on a small CNN: cascade order, cumulative
re-initialization, the explainer really running on the randomized copy, and input-independent baselines
failing the check."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TinyNet, tiny_batch
from torch import nn

from evalcam.methods import build_explainer
from evalcam.methods.baselines import CenterBaseline
from evalcam.methods.gradcam import GradCAM
from evalcam.metrics import sanity
from evalcam.metrics.sanity import CascadingRandomization, cascade_layers, rebind_explainer, reinitialize
from evalcam.metrics.stats import spearman


def _batch(explainer, model, n=3, size=16, extra=None):
    return tiny_batch(n, size, explainer, model, id_prefix="", extra=extra or {})


def test_default_cascade_goes_from_the_top_down():
    assert cascade_layers(TinyNet(spare=True)) == ["spare", "fc", "conv2", "conv1"]


def test_efficientnet_cascade(lite0):
    layers = cascade_layers(lite0.model)
    assert layers[:4] == ["fc", "bn1", "conv_head", "blocks.15"]
    assert layers[-3:] == ["blocks.0", "bn0", "conv_stem"]
    assert len(layers) == 21


def test_reinitialize_is_seeded_and_changes_weights():
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    before = a.weight.detach().clone()
    reinitialize(a, 7)
    reinitialize(b, 7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, before)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.fill_(3.0)
    reinitialize(bn, 0)
    assert torch.equal(bn.running_mean, torch.zeros(4))


def test_unused_layer_keeps_maps_and_later_steps_are_cumulative():
    model = TinyNet(spare=True).eval()
    original = copy.deepcopy(model.state_dict())
    explainer = GradCAM(model, "act2")
    batch = _batch(explainer, model)
    metric = CascadingRandomization(steps=3, seed=11)
    records = metric.update(batch)
    out = metric.compute()
    assert list(out)[:3] == ["step_01_spare", "step_02_fc", "step_03_conv2"]
    assert out["step_01_spare"] == pytest.approx(1.0)  # the explainer sees an unchanged function
    assert out["step_02_fc"] < 0.9  # ... and the randomized fc, not the original one
    # step k == maps of a copy whose k top-most layers were re-initialized with seeds 11, 12, ...
    reference = copy.deepcopy(model)
    for k, name in enumerate(["spare", "fc", "conv2"]):
        reinitialize(dict(reference.named_modules())[name], 11 + k)
    maps = GradCAM(reference, "act2").explain(batch.inputs, batch.pred_classes[:, 0]).maps[:, 0]
    rho, _ = spearman(batch.pred_maps[:, 0], maps)
    assert [r["sanity.spearman"][2] for r in records] == pytest.approx(rho.tolist())
    # the evaluated model itself is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())


def test_input_independent_baseline_fails_the_check():
    model = TinyNet(spare=True).eval()
    metric = CascadingRandomization(steps=4)
    metric.update(_batch(CenterBaseline(model, map_size=(8, 8)), model))
    out = metric.compute()
    assert [out[k] for k in ("step_01_spare", "step_02_fc", "step_03_conv2", "step_04_conv1")] == [1.0] * 4
    assert out["final_spearman"] == 1.0


def test_rebuilding_through_the_method_registry_gives_the_same_numbers():
    model = TinyNet(spare=True).eval()
    explainer = GradCAM(model, "act2")
    rebound, rebuilt = CascadingRandomization(steps=2), CascadingRandomization(steps=2)
    rebound.update(_batch(explainer, model))
    registered = build_explainer("gradcam", _batch(explainer, model).bundle, target_layer="act2")
    assert registered.recipe == ("gradcam", {"target_layer": "act2"})
    rebuilt.update(_batch(registered, model))
    assert rebound.compute() == rebuilt.compute()


def test_a_registered_method_is_rebuilt_on_the_copy_not_re_pointed(monkeypatch):
    def refuse(*args):
        raise AssertionError("an explainer with a recipe must be rebuilt, not re-pointed")

    monkeypatch.setattr(sanity, "rebind_explainer", refuse)
    model = TinyNet(spare=True).eval()
    explainer = build_explainer("gradcam", _batch(GradCAM(model, "act2"), model).bundle)
    metric = CascadingRandomization(steps=3)
    metric.update(_batch(explainer, model))
    # re-initializing the unused `spare` layer leaves the maps, the next two steps change them
    out = metric.compute()
    assert out["step_01_spare"] == pytest.approx(1.0)
    assert out["step_03_conv2"] < 0.99


def test_rebind_points_model_references_at_the_copy():
    model = TinyNet(spare=True)
    explainer = GradCAM(model, "act2")
    explainer.head = model.fc  # a method that keeps a submodule (e.g. CAM's classifier)
    copy_model = copy.deepcopy(model)
    clone = rebind_explainer(explainer, model, copy_model)
    assert clone.model is copy_model and clone.head is copy_model.fc
    assert explainer.model is model and explainer.head is model.fc


def test_merged_halves_equal_one_accumulator():
    model = TinyNet(spare=True).eval()
    explainer = GradCAM(model, "act2")
    full = _batch(explainer, model, n=4)

    whole, first, second = (CascadingRandomization(steps=2) for _ in range(3))
    whole.update(full)
    first.update(full.rows(0, 2))
    second.update(full.rows(2, 4))
    first.merge(second)
    assert first.compute() == pytest.approx(whole.compute())


def test_step_names_survive_a_resume_from_saved_state():
    model = TinyNet(spare=True).eval()
    explainer = GradCAM(model, "act2")
    metric = CascadingRandomization(steps=2)
    metric.update(_batch(explainer, model))
    metric.update(_batch(explainer, model, n=2))
    resumed = CascadingRandomization(steps=2)  # a restarted run: states only, no batch seen
    resumed.load_state_dict(metric.state_dict())
    assert resumed.compute() == metric.compute()
    assert list(resumed.compute())[:2] == ["step_01_spare", "step_02_fc"]
