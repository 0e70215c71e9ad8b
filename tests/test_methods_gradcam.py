"""Grad-CAM against captum's LayerGradCam (an independent implementation) on real photos."""

from __future__ import annotations

import pytest
import torch

from evalcam.methods import TopK, build_explainer


@pytest.fixture(scope="module")
def inputs(lite0, photos):
    return lite0.preprocess(list(photos.values()), "cpu")


def test_gradcam_matches_captum_on_real_images(lite0, inputs):
    captum_attr = pytest.importorskip("captum.attr")
    explainer = build_explainer("gradcam", lite0)
    explanation = explainer.explain(inputs, TopK(2))
    assert explanation.maps.shape == (4, 2, 7, 7)
    oracle = captum_attr.LayerGradCam(lite0.model, lite0.model.head_act)
    for k in range(2):
        targets = explanation.classes[:, k]
        reference = oracle.attribute(inputs, target=targets.tolist(), relu_attributions=True)[:, 0].detach()
        for ours, theirs in zip(explanation.maps[:, k], reference, strict=True):
            r = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
            assert r >= 0.99


def test_sensible_predictions_on_sample_photos(lite0, inputs):
    """The preprocessing is right: the packaged photos get their obvious ImageNet classes."""
    with torch.no_grad():
        top5 = lite0.model(inputs).topk(5, dim=1).indices.tolist()
    cats, espresso_cup, uniform, church = {281, 282, 285}, {967, 968, 504}, 652, {442, 663, 698}
    assert top5[0][0] in cats
    assert top5[1][0] in espresso_cup
    assert uniform in top5[2]
    assert church & set(top5[3])


def test_batch_equals_single_images(lite0, inputs):
    explainer = build_explainer("gradcam", lite0)
    targets = torch.tensor([281, 967, 652, 698])
    batched = explainer(inputs, targets)
    singles = torch.cat([explainer(inputs[i : i + 1], targets[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 7, 7)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)


def test_callable_target_is_any_differentiable_function(lite0, inputs):
    explainer = build_explainer("gradcam", lite0)
    by_index = explainer(inputs[:1], torch.tensor([281]))
    by_function = explainer(inputs[:1], lambda logits: 2.0 * logits[:, 281])
    torch.testing.assert_close(by_function, 2.0 * by_index)


def test_hooks_are_removed_even_after_errors(lite0, inputs):
    explainer = build_explainer("gradcam", lite0)
    with pytest.raises(ValueError, match="out of range"):
        explainer(inputs[:1], torch.tensor([5000]))
    leftover = [m for m in lite0.model.modules() if m._forward_hooks]
    assert leftover == []


def test_unknown_layer_lists_candidates(lite0):
    from evalcam.models import LayerNotFoundError

    with pytest.raises(LayerNotFoundError, match=r"candidates: .*head_act"):
        build_explainer("gradcam", lite0, target_layer="head_actt")
