"""Parity of the robustness and randomization families (issue 18) with Quantus 0.6 on a tiny CNN explained
by Grad-CAM: both sides get the same model, images, explanation function and noise (Quantus' perturbation
function is replaced by one that adds evalcam's seeded noise, copy by copy), so the numbers must agree to
float round-off. Where Quantus departs from the paper the test pins the difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import STD, TinyNet, quantus_explain, tiny_batch

from evalcam.maps import upsample
from evalcam.metrics.continuity import Continuity
from evalcam.metrics.emprt import EfficientMPRT
from evalcam.metrics.local_lipschitz import LocalLipschitz
from evalcam.metrics.max_sensitivity import MaxSensitivity
from evalcam.metrics.random_logit import max_normalized
from evalcam.metrics.randomization import ssim
from evalcam.metrics.reexplain import copy_noise
from evalcam.metrics.relative_stability import (
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)
from evalcam.metrics.smprt import SmoothMPRT

quantus = pytest.importorskip("quantus")
if not hasattr(np, "trapz"):  # quantus 0.6 calls np.trapz, removed in NumPy 2.4
    np.trapz = np.trapezoid

SAMPLES = 4


def _arrays(batch):
    x = batch.inputs.numpy()
    y = batch.pred_classes[:, 0].numpy()
    a = upsample(batch.pred_maps[:, 0], tuple(x.shape[-2:]))[:, None].numpy()
    return x, y, a


def _evalcam_noise(metric, batch):
    """The noise evalcam adds to copy ``s`` of every image, in network-input units, one array per copy."""
    ids = [s.image_id for s in batch.samples]
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return [
        (
            copy_noise(ids, [s] * len(ids), batch.inputs.shape[1:], metric.noise, metric.scale, metric.seed)
            / std
        )
        .flatten(1)
        .numpy()
        for s in range(metric.samples)
    ]


def _replaying(noise):
    draws = iter(noise)

    def perturb(arr, indices=None, **_kwargs):
        return arr + next(draws)

    return perturb


def _quantus_scores(quantus_metric, batch, **kwargs):
    x, y, a = _arrays(batch)
    scores = quantus_metric(
        model=batch.explainer.model,
        x_batch=x,
        y_batch=y,
        a_batch=a,
        explain_func=quantus_explain,
        device="cpu",
        **kwargs,
    )
    return np.asarray(scores, dtype=np.float64)


def _layer_gradcam_scores(quantus_metric, model, batch):
    """Quantus' scores with its own explainer, Captum's LayerGradCam at ``act2`` upsampled bilinearly to the
    input (what the MPRT papers' notebooks use; evalcam's Grad-CAM with ``relu=False`` computes the same)."""
    x, y, _ = _arrays(batch)
    return quantus_metric(
        model=model,
        x_batch=x,
        y_batch=y,
        a_batch=None,
        explain_func=quantus.explain,
        device="cpu",
        explain_func_kwargs={
            "method": "LayerGradCam",
            "gc_layer": "model.act2",
            "interpolate": tuple(x.shape[-2:]),
            "interpolate_mode": "bilinear",
        },
    )


def _evalcam_scores(metric, batch):
    records = metric.update(batch)
    return np.array([r.get(f"{metric.name}.score", np.nan) for r in records])


QUANTUS_OFF = {"abs": False, "normalise": False, "disable_warnings": True, "display_progressbar": False}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (MaxSensitivity(samples=SAMPLES, scale=0.05), quantus.MaxSensitivity),
        (LocalLipschitz(samples=SAMPLES, scale=0.025), quantus.LocalLipschitzEstimate),
        (RelativeInputStability(samples=SAMPLES, scale=0.02), quantus.RelativeInputStability),
        (RelativeOutputStability(samples=SAMPLES, scale=0.02), quantus.RelativeOutputStability),
    ],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", "")),
)
def test_sampled_robustness_matches_quantus_on_the_same_noise(ours, theirs):
    batch = tiny_batch()
    expected = _quantus_scores(
        theirs(nr_samples=SAMPLES, perturb_func=_replaying(_evalcam_noise(ours, batch)), **QUANTUS_OFF), batch
    )
    got = _evalcam_scores(ours, batch)
    assert ours.compute()["changed_predictions"] == 0  # so Quantus' NaN rule does not fire here
    assert np.all(np.isfinite(expected)) and np.all(got > 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_relative_representation_stability_matches_quantus_on_the_cam_layer():
    ours = RelativeRepresentationStability(samples=SAMPLES, scale=0.02)
    batch = tiny_batch()
    theirs = quantus.RelativeRepresentationStability(
        nr_samples=SAMPLES,
        perturb_func=_replaying(_evalcam_noise(ours, batch)),
        layer_names=["act2"],
        **QUANTUS_OFF,
    )
    np.testing.assert_allclose(_evalcam_scores(ours, batch), _quantus_scores(theirs, batch), rtol=1e-4)


def test_relative_stability_keeps_images_whose_copies_change_class_where_quantus_gives_nan():
    """Agarwal et al. take the max over copies that keep the prediction; Quantus' np.max over copies with
    the dropped ones set to NaN makes the whole image NaN as soon as one copy changes class."""
    net = TinyNet()
    with torch.no_grad():  # classes 1 and 2 nearly tied, so noise flips some copies' predictions
        net.fc.bias.zero_()
        net.fc.bias[2] = 0.066
    ours = RelativeInputStability(samples=6, scale=0.3)
    batch = tiny_batch(model=net)
    expected = _quantus_scores(
        quantus.RelativeInputStability(
            nr_samples=6, perturb_func=_replaying(_evalcam_noise(ours, batch)), **QUANTUS_OFF
        ),
        batch,
    )
    got = _evalcam_scores(ours, batch)
    out = ours.compute()
    assert 0 < out["changed_predictions"] < 1
    nan_images = np.isnan(expected)
    assert nan_images.tolist() == [True, False, True]  # Quantus lost images 0 and 2
    # image 2 kept one of its 6 copies and is scored on it; image 0 kept none: unmeasured, not NaN
    assert np.isnan(got[0]) and np.isfinite(got[2]) and out["unmeasured"] == 1
    assert "score" in out and np.isfinite(out["score"])
    np.testing.assert_allclose(got[~nan_images], expected[~nan_images], rtol=1e-4)
    assert np.isfinite(out["score"])


def test_continuity_matches_quantus_translations():
    ours = Continuity(steps=10, fill="min", normalize=True)
    batch = tiny_batch()
    theirs = quantus.Continuity(
        nr_steps=10,
        abs=True,
        normalise=True,
        normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
        disable_warnings=True,
    )
    np.testing.assert_allclose(_evalcam_scores(ours, batch), _quantus_scores(theirs, batch), rtol=1e-4)


def test_emprt_matches_quantus_with_its_randomization_scheme():
    ours = EfficientMPRT(scheme="quantus", seed=3)
    batch = tiny_batch()
    theirs = quantus.EfficientMPRT(seed=3, disable_warnings=True, display_progressbar=False)
    expected = _quantus_scores(theirs, batch)
    got = np.array([r["emprt.score"] for r in ours.update(batch)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_emprt_abs_matches_quantus_abs_on_signed_maps():
    """The eMPRT paper's setting (sanity-checks-revisited's benchmarking notebook): Quantus' LayerGradCam
    (Captum: no ReLU, bilinear upsampling), normalised by the second moment, then ``abs``; 100 bins,
    bottom-up. evalcam's Grad-CAM with ``relu=False`` and ``abs=True`` gives the same scores; without
    ``abs`` the signed maps score differently."""
    from evalcam.methods.gradcam import GradCAM

    model = TinyNet().eval()
    batch = tiny_batch(model=model, explainer=GradCAM(model, "act2", relu=False))
    assert (batch.pred_maps < 0).any()  # signed maps: abs matters
    theirs = quantus.EfficientMPRT(
        layer_order="bottom_up",
        complexity_func=quantus.complexity_func.discrete_entropy,
        complexity_func_kwargs={"n_bins": 100},
        abs=True,
        normalise=True,
        normalise_func=quantus.normalise_by_average_second_moment_estimate,
        seed=3,
        disable_warnings=True,
        display_progressbar=False,
    )
    expected = np.asarray(_layer_gradcam_scores(theirs, model, batch), dtype=np.float64)
    ours = EfficientMPRT(scheme="quantus", seed=3, abs=True)
    got = np.array([r["emprt.score"] for r in ours.update(batch)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    signed_metric = EfficientMPRT(scheme="quantus", seed=3)
    signed = np.array([r["emprt.score"] for r in signed_metric.update(batch)])
    assert np.abs(signed - expected).max() > 1e-3


def test_random_logit_ssim_is_the_papers_2d_ssim_where_quantus_flattens_the_maps():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    batch = tiny_batch(n=1)
    x, y, a = _arrays(batch)
    theirs = quantus.RandomLogit(num_classes=4, seed=5, disable_warnings=True)
    expected = _quantus_scores(theirs, batch)[0]
    # the class Quantus drew: uniform over the other classes with numpy's global RNG seeded by `seed`
    np.random.seed(5)
    off = [c for c in range(4) if c != int(y[0])][int(np.random.randint(0, 3, 1)[0])]
    off_map = torch.from_numpy(quantus_explain(batch.explainer.model, x, np.array([off])))[:, 0]
    a_n = max_normalized(torch.from_numpy(a[:, 0]).double())
    b_n = max_normalized(off_map.double())
    rng = float(torch.cat([a_n, b_n]).max() - torch.cat([a_n, b_n]).min())
    flat = skimage_metrics.structural_similarity(a_n.flatten().numpy(), b_n.flatten().numpy(), data_range=rng)
    assert expected == pytest.approx(flat, abs=1e-6)  # Quantus: 1-D SSIM of the flattened maps (float32)
    two_d = skimage_metrics.structural_similarity(a_n[0].numpy(), b_n[0].numpy(), data_range=rng)
    ours = float(ssim(a_n, b_n)[0])
    assert ours == pytest.approx(two_d, abs=1e-9)  # evalcam: the paper's 2-D SSIM
    assert abs(ours - expected) > 1e-3  # and the two differ on real maps


def test_smprt_matches_quantus_with_its_noise_replayed(monkeypatch):
    """Quantus' SmoothMPRT explains through ``quantus.explain`` (Captum's LayerGradCam: no ReLU, bilinear
    upsampling), so evalcam's Grad-CAM runs with ``relu=False``; Quantus draws its smoothing noise from
    ``np.random.randn``, which is made to replay evalcam's seeded noise (the same copies for every model)."""
    from evalcam.methods.gradcam import GradCAM

    per, noise = 3, 0.1
    model = TinyNet().eval()
    batch = tiny_batch(model=model, explainer=GradCAM(model, "act2", relu=False))
    ours = SmoothMPRT(samples=per, noise=noise, scheme="quantus", seed=7)
    ids = [s.image_id for s in batch.samples]
    draws = [
        copy_noise(ids, [s] * len(ids), batch.inputs.shape[1:], "gaussian", 1.0, 7).numpy()
        for s in range(per - 1)
    ]
    calls = iter(range(10_000))
    monkeypatch.setattr(np.random, "randn", lambda *shape: draws[next(calls) % (per - 1)].reshape(shape))
    theirs = quantus.SmoothMPRT(
        nr_samples=per, noise_magnitude=noise, seed=7, disable_warnings=True, display_progressbar=False
    )
    scores = _layer_gradcam_scores(theirs, model, batch)
    records = ours.update(batch)
    assert records[0]["smprt.layers"] == ["conv1", "conv2", "fc"]
    expected = np.array([scores[layer] for layer in ("conv1", "conv2", "fc")]).T  # [images, steps]
    got = np.array([r["smprt.spearman"] for r in records])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(scores["original"], 1.0)  # the replayed noise makes both originals equal
