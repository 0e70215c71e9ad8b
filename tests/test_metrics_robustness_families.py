"""Robustness (max-sensitivity, local Lipschitz, RIS/ROS/RRS, continuity) and randomization (eMPRT,
sMPRT, random logit) families of issue 18 on a tiny CNN: batching, seeding, input-independent baselines
behaving as the papers predict, degenerate maps, and the refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import TinyNet, tiny_batch

from evalcam.bench.robustness_metrics import count_forwards
from evalcam.methods.base import Explainer, Explanation, resolve_targets
from evalcam.methods.baselines import CenterBaseline
from evalcam.methods.gradcam import GradCAM
from evalcam.metrics import METRICS, build_metrics
from evalcam.metrics.continuity import shifts, translate
from evalcam.metrics.random_logit import other_classes
from evalcam.metrics.randomization import fully_randomized, histogram_entropy
from evalcam.metrics.reexplain import copy_noise

ROBUSTNESS = [
    "max_sensitivity",
    "local_lipschitz",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "continuity",
]
RANDOMIZATION = ["emprt", "smprt", "random_logit"]
SMALL = {"samples": 3, "chunk_size": 4}
PARAMS = {name: dict(SMALL) for name in ROBUSTNESS}
PARAMS["continuity"] = {"steps": 6, "chunk_size": 4}
PARAMS["emprt"] = {}
PARAMS["smprt"] = {"samples": 2, "steps": 2}
PARAMS["random_logit"] = {}


def _build(name: str, **extra):
    (metric,) = build_metrics({name: {**PARAMS[name], **extra}}, "cpu")
    return metric


class ConstantExplainer(Explainer):
    """A map with no signal, whatever the input or class."""

    def explain(self, images, targets):
        logits = self.model(images).detach()
        n = images.shape[0]
        classes, _ = resolve_targets(targets, logits)
        return Explanation(maps=torch.ones(n, 1, 8, 8), logits=logits, classes=classes)


@pytest.mark.parametrize("name", ROBUSTNESS + RANDOMIZATION)
def test_registered_with_directions_for_what_it_logs(name):
    metric = _build(name)
    assert type(metric) is METRICS[name] and metric.name == name
    out = metric.compute()  # nothing accumulated yet: no mean, no NaN
    assert all(np.isfinite(v) for v in out.values())
    metric.update(tiny_batch())
    out = metric.compute()
    assert set(metric.higher_is_better) <= set(out)
    assert all(np.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", [*ROBUSTNESS, "random_logit"])
def test_image_scores_do_not_depend_on_the_batch_they_are_in(name):
    batch = tiny_batch(n=3)
    whole = _build(name).update(batch)
    alone = _build(name, chunk_size=1).update(batch.rows(1, 2))
    key = next(k for k in alone[0] if k.endswith((".score", ".ssim")))
    assert whole[1][key] == pytest.approx(alone[0][key], rel=1e-5)


@pytest.mark.parametrize("name", ROBUSTNESS + RANDOMIZATION)
def test_a_model_in_training_mode_is_refused_in_one_line(name):
    batch = tiny_batch()
    batch.explainer.model.train()
    with pytest.raises(
        ValueError, match=rf"^{name}: the model is in training mode .* call model.eval\(\) first$"
    ):
        _build(name).update(batch)


@pytest.mark.parametrize("name", ROBUSTNESS + RANDOMIZATION)
def test_maps_without_signal_are_counted_not_scored(name):
    model = TinyNet().eval()
    metric = _build(name)
    records = metric.update(tiny_batch(model=model, explainer=ConstantExplainer(model)))
    out = metric.compute()
    assert out["degenerate_maps"] >= 3
    assert all(np.isfinite(v) for v in out.values())
    if name != "smprt":  # sMPRT scores a constant map 0 (the shared correlation rule); others leave it out
        assert not any(k.endswith((".score", ".ssim")) for r in records for k in r)


@pytest.mark.parametrize("name", ["max_sensitivity", "local_lipschitz", "continuity"])
def test_an_input_free_map_is_perfectly_robust(name):
    model = TinyNet().eval()
    metric = _build(name)
    records = metric.update(tiny_batch(model=model, explainer=CenterBaseline(model, map_size=(8, 8))))
    assert [r[f"{name}.score"] for r in records] == [0.0, 0.0, 0.0]


def test_grad_cam_is_less_robust_to_more_noise():
    batch = tiny_batch()
    weak = _build("max_sensitivity", scale=0.01)
    strong = _build("max_sensitivity", scale=0.2)
    weak.update(batch)
    strong.update(batch)
    assert 0 < weak.compute()["score"] < strong.compute()["score"]


def test_noise_is_seeded_per_image_and_copy():
    a = copy_noise(["x", "y"], [0, 1], (3, 4, 4), "uniform", 0.1, seed=0)
    b = copy_noise(["y"], [1], (3, 4, 4), "uniform", 0.1, seed=0)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert float(a.abs().max()) <= 0.1
    assert not torch.equal(a, copy_noise(["x", "y"], [0, 1], (3, 4, 4), "uniform", 0.1, seed=1))
    with pytest.raises(ValueError, match="unknown noise 'salt'; use one of: uniform, gaussian"):
        copy_noise(["x"], [0], (3, 4, 4), "salt", 0.1, seed=0)


def test_continuity_translates_like_quantus_and_skips_the_identity():
    assert shifts(16, 4) == [-8, 8, 16]  # dx = 33 // 4 = 8: -8, 0 (skipped), 8, 16
    x = torch.arange(12.0).view(1, 3, 4)
    fill = torch.full((1, 1, 1), -1.0)
    assert translate(x, 1, fill)[0, 0].tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert translate(x, -2, fill)[0, 0].tolist() == [2.0, 3.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="continuity: 40 steps exceed the 33 shifts of a 16-px input"):
        shifts(16, 40)


def test_histogram_entropy_is_scipys_entropy_of_numpys_histogram():
    maps = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0)) ** 3
    expected = [scipy.stats.entropy(np.histogram(m.numpy(), bins=100)[0]) for m in maps]
    np.testing.assert_allclose(histogram_entropy(maps).numpy(), expected, rtol=1e-12)
    assert float(histogram_entropy(torch.ones(1, 5, 5))[0]) == 0.0


def test_randomization_never_touches_the_users_model_and_is_seeded():
    model = TinyNet().eval()
    before = copy.deepcopy(model.state_dict())
    a = fully_randomized(model, seed=1)
    b = fully_randomized(model, seed=1, scheme="cascade")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not torch.equal(a.conv1.weight, model.conv1.weight)
    metric = _build("smprt")
    metric.update(tiny_batch(model=model))
    _build("emprt").update(tiny_batch(model=model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_input_free_map_fails_every_randomization_check():
    """A map that ignores the model: identical after randomization (sMPRT correlation 1, eMPRT no rise in
    complexity) and for any class (random-logit SSIM 1)."""
    model = TinyNet().eval()
    batch = tiny_batch(model=model, explainer=CenterBaseline(model, map_size=(8, 8)))
    out = {}
    for name in RANDOMIZATION:
        metric = _build(name)
        metric.update(batch)
        out[name] = metric.compute()
    assert out["smprt"]["final_spearman"] == pytest.approx(1.0)
    assert out["emprt"]["score"] == pytest.approx(0.0, abs=1e-12)
    assert out["random_logit"]["ssim"] == pytest.approx(1.0)


def test_grad_cam_passes_the_randomization_checks_on_the_tiny_net():
    batch = tiny_batch()
    smprt = _build("smprt", steps=None)
    smprt.update(batch)
    logit = _build("random_logit")
    logit.update(batch)
    assert smprt.compute()["final_spearman"] < 0.5
    assert logit.compute()["ssim"] < 0.9


def test_the_other_class_is_uniform_over_the_rest_and_fixed_per_image():
    classes = torch.full((400,), 2)
    ids = [f"i{k}" for k in range(400)]
    drawn = other_classes(ids, classes, 4, seed=0)
    assert not bool((drawn == 2).any())
    counts = torch.bincount(drawn, minlength=4)
    assert counts[2] == 0 and int(counts.min()) == 0 and sorted(counts.tolist())[1] > 100
    assert torch.equal(other_classes(ids[5:6], classes[5:6], 4, seed=0), drawn[5:6])


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^max_sensitivity: scale must be > 0 \(pixel units\), got 0$"):
        _build("max_sensitivity", scale=0)
    with pytest.raises(ValueError, match=r"^emprt: unknown scheme 'random'; use one of: cascade, quantus$"):
        _build("emprt", scheme="random")
    with pytest.raises(
        ValueError, match=r"^smprt: unknown order 'sideways'; use one of: bottom_up, top_down$"
    ):
        _build("smprt", order="sideways")
    with pytest.raises(ValueError, match=r"^continuity: unknown fill 'grey'; use one of: black, min$"):
        _build("continuity", fill="grey")


class TwoPassGradCAM(GradCAM):
    """Grad-CAM after an unrelated forward pass: the representation cannot be read from its passes."""

    def explain(self, images, targets):
        with torch.no_grad():
            self.model(images.flip(-1))
        return super().explain(images, targets)


def test_rrs_reads_the_representation_from_the_explainers_pass_when_it_made_exactly_one():
    model = TinyNet().eval()
    scores, forwards = [], []
    for explainer in (GradCAM(model, "act2"), TwoPassGradCAM(model, "act2")):
        batch = tiny_batch(model=model, explainer=explainer)
        metric = _build("relative_representation_stability")
        with count_forwards(model) as counter:
            records = metric.update(batch)
        scores.append([r["relative_representation_stability.score"] for r in records])
        forwards.append(counter["images"])
    assert scores[0] == pytest.approx(scores[1], rel=1e-9)
    # 3 clean images + 9 copies explained; the two-pass explainer doubles its passes and needs 9 more
    assert forwards == [3 + 9, 3 + 2 * 9 + 9]


def test_forward_counter_counts_images():
    model = TinyNet().eval()
    with count_forwards(model) as counter:
        model(torch.zeros(2, 3, 8, 8))
        model(torch.zeros(5, 3, 8, 8))
    assert counter["images"] == 7
    model(torch.zeros(1, 3, 8, 8))  # the hook is gone
    assert counter["images"] == 7
