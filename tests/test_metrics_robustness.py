"""Adversarial robustness of explanations: the attacks on a linear model (exact answers), the metric's
bookkeeping on a small CNN with Grad-CAM."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearToy, TinyNet

from evalcam.data.types import Sample
from evalcam.methods import TopK
from evalcam.methods.gradcam import GradCAM
from evalcam.metrics.robustness import AdversarialRobustness, _input_gradient, fgsm, pgd, random_starts
from evalcam.models.bundle import ModelBundle, Preprocess
from evalcam.pipeline import explain_batch

MEAN = torch.full((1, 3, 1, 1), 0.5)
STD = torch.full((1, 3, 1, 1), 0.25)


def _linear_case():
    g = torch.Generator().manual_seed(0)
    weights = torch.zeros(2, 3, 4, 4)
    weights[0] = torch.randn(3, 4, 4, generator=g)
    pixels = torch.full((1, 3, 4, 4), 0.5)
    model = LinearToy(weights, trainable=True).eval()
    return model, weights[0], pixels


def test_fgsm_moves_every_pixel_by_eps_against_the_class():
    model, w, pixels = _linear_case()
    eps = 0.05
    adv = fgsm(model, pixels, torch.tensor([0]), MEAN, STD, eps)
    # d CE / d x = -(1 - p0) * w / std: the signed step is -eps * sign(w), in pixel units
    assert torch.allclose(adv - pixels, -eps * w.sign()[None])
    with torch.no_grad():
        drop = model((pixels - MEAN) / STD)[0, 0] - model((adv - MEAN) / STD)[0, 0]
    assert float(drop) == pytest.approx(eps * float(w.abs().sum()) / 0.25, rel=1e-5)


def test_pgd_stays_in_the_eps_ball_and_reaches_its_corner_on_a_linear_model():
    model, w, pixels = _linear_case()
    eps = 0.05
    adv = pgd(model, pixels, torch.tensor([0]), MEAN, STD, eps, alpha=eps / 2, steps=3)
    assert torch.allclose(adv - pixels, -eps * w.sign()[None])
    start = torch.full_like(pixels, 0.5)  # a start outside the ball is projected back first
    adv = pgd(model, pixels, torch.tensor([0]), MEAN, STD, eps, alpha=0.01, steps=1, start=start)
    assert float((adv - pixels).abs().max()) <= eps + 1e-7


def test_attacks_keep_pixels_in_range():
    model, w, _ = _linear_case()
    pixels = torch.where(w[None] < 0, torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))  # push out of [0, 1]
    adv = fgsm(model, pixels, torch.tensor([0]), MEAN, STD, 0.2)
    assert torch.equal(adv, pixels)  # every step points outside the valid box and is clipped


def _setup(n=3, size=16):
    model = TinyNet().eval()
    bundle = ModelBundle(
        model=model,
        name="tiny",
        target_layer="act2",
        preprocess=Preprocess((size, size), (0.5,) * 3, (0.25,) * 3),
    )
    explainer = GradCAM(model, "act2")
    g = torch.Generator().manual_seed(1)
    inputs = (torch.rand(n, 3, size, size, generator=g) - 0.5) / 0.25
    pred = explainer.explain(inputs, TopK(1))
    classes = pred.classes[:, 0].tolist()
    # the predicted class is the label of images 0 and 1 (whole-image boxes), not of image 2
    samples = [
        Sample(
            image=torch.zeros(3, size, size, dtype=torch.uint8),
            image_id=f"img{i}",
            labels=[classes[i]] if i < 2 else [(classes[i] + 1) % 4],
            boxes={
                (classes[i] if i < 2 else (classes[i] + 1) % 4): torch.tensor(
                    [[0.0, 0.0, size - 1, size - 1]]
                )
            },
        )
        for i in range(n)
    ]
    return explain_batch(samples, inputs, bundle, explainer, topk=1, need_gt=False)


def test_zero_budget_changes_nothing():
    batch = _setup()
    metric = AdversarialRobustness(attacks=["fgsm", "pgd"], eps=0.0, steps=2, alpha=0.01)
    records = metric.update(batch)
    out = metric.compute()
    for attack in ("fgsm", "pgd"):
        assert out[f"{attack}_success_rate"] == 0.0
        assert out[f"{attack}_spearman"] == pytest.approx(1.0)
        assert out[f"{attack}_pearson"] == pytest.approx(1.0)
        assert out[f"{attack}_prob_drop"] == pytest.approx(0.0, abs=1e-6)
        assert out[f"{attack}_loc_acc"] == out["clean_loc_acc"]
        assert out[f"{attack}_iou"] == pytest.approx(out["clean_iou"])
        assert out[f"{attack}_pointing_acc"] == out["clean_pointing_acc"] == 1.0  # whole-image boxes
    assert out["evaluable"] == 2.0  # image 2's prediction is not one of its labels
    assert [r["robustness.evaluable"] for r in records] == [True, True, False]


def test_attack_lowers_the_class_confidence_and_counts_match_records():
    batch = _setup()
    metric = AdversarialRobustness(attacks=["pgd"], eps=0.3, steps=3, alpha=0.1)
    records = metric.update(batch)
    out = metric.compute()
    drops = [r["robustness.pgd_prob_drop"] for r in records]
    assert all(d > 0 for d in drops)
    assert out["pgd_prob_drop"] == pytest.approx(sum(drops) / 3)
    assert out["pgd_success_rate"] == pytest.approx(sum(r["robustness.pgd_success"] for r in records) / 3)
    assert out["pgd_spearman"] < 1.0


def test_random_start_is_seeded_per_image():
    batch = _setup()
    runs = []
    for _ in range(2):
        metric = AdversarialRobustness(
            attacks=["pgd"], eps=0.1, steps=1, alpha=0.01, random_start=True, seed=3
        )
        runs.append([r["robustness.pgd_prob_drop"] for r in metric.update(batch)])
    assert runs[0] == runs[1]


def test_random_starts_depend_on_the_image_not_its_batch():
    ids = ["a", "b", "c"]
    together = random_starts(ids, (3, 4, 4), eps=0.1, seed=7)
    alone = torch.cat([random_starts([i], (3, 4, 4), eps=0.1, seed=7) for i in reversed(ids)]).flip(0)
    assert torch.equal(together, alone)
    assert float(together.abs().max()) <= 0.1
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(together, random_starts(ids, (3, 4, 4), eps=0.1, seed=8))


def test_loss_gradient_of_a_batch_is_each_images_own():
    """Summed (not averaged) per-image losses: the batch gradient is the stack of single-image gradients,
    not scaled by 1/B and not mixed across images."""
    batch = _setup(n=4)
    model = batch.bundle.model
    pixels = (batch.inputs * STD + MEAN).clamp(0, 1)
    classes = batch.pred_classes[:, 0]
    together = _input_gradient(model, pixels, classes, MEAN, STD)
    alone = torch.cat(
        [_input_gradient(model, pixels[i : i + 1], classes[i : i + 1], MEAN, STD) for i in range(4)]
    )
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-9)


def test_every_record_is_the_same_in_one_batch_or_image_by_image():
    """FGSM and PGD from a seeded random start: per-image results do not depend on the batch (on this small
    network no pre-activation sits within round-off of a ReLU kink; see the module docstring for why a real
    network can differ by a few sign steps)."""
    batch = _setup(n=4)
    kw = dict(attacks=["fgsm", "pgd"], eps=0.1, steps=3, alpha=0.03, random_start=True, seed=5)
    together = AdversarialRobustness(**kw).update(batch)
    singles = AdversarialRobustness(**kw)
    alone = [record for i in range(4) for record in singles.update(batch.rows(i, i + 1))]
    for a, b in zip(together, alone, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_merged_halves_equal_one_accumulator():
    batch = _setup(n=4)
    kw = dict(attacks=["fgsm"], eps=0.05)

    whole, first, second = (
        AdversarialRobustness(**kw),
        AdversarialRobustness(**kw),
        AdversarialRobustness(**kw),
    )
    whole.update(batch)
    first.update(batch.rows(0, 2))
    second.update(batch.rows(2, 4))
    first.merge(second)
    merged, single = first.compute(), whole.compute()
    assert all(
        merged[k] == pytest.approx(single[k], abs=1e-6) or (merged[k] != merged[k] and single[k] != single[k])
        for k in single
    )
