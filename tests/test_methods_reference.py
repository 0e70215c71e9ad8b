"""Every method against an independent implementation (pytorch-grad-cam, captum) on real photos with
EfficientNet-Lite0: per-map Pearson correlation >= 0.99 at the same resolution."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import corr
from torch import nn

from evalcam.methods import TopK, build_explainer
from evalcam.methods.base import capture_activations
from evalcam.methods.hooks import count_hooks

pgc = pytest.importorskip("pytorch_grad_cam")
captum_attr = pytest.importorskip("captum.attr")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def to_input_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, half-pixel centres: what pytorch-grad-cam's cv2.resize(INTER_LINEAR) does."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


@pytest.fixture(scope="module")
def inputs(lite0, photos):
    """Two real photos (a cat, an espresso cup): enough for per-map comparisons, cheap on 2 CPU cores."""
    return lite0.preprocess([photos["chelsea"], photos["coffee"]], "cpu")


@pytest.fixture(scope="module")
def small(inputs):
    """One photo at 128 px for the methods that need one forward pass per channel (Lite0's static
    "same" padding accepts any size; the comparison only needs both sides to see the same input)."""
    return F.interpolate(inputs[:1], size=(128, 128), mode="bilinear", antialias=True, align_corners=False)


@pytest.fixture(scope="module")
def relu_twin(lite0):
    """Lite0 with every ReLU6 rewritten as ReLU -> Hardtanh(0, 6): the same function, but the peers'
    guided backpropagation only recognises nn.ReLU modules. Through Hardtanh the gradient is masked by
    1[0 < x < 6] exactly as through ReLU6, so guided semantics are unchanged."""
    twin = copy.deepcopy(lite0.model)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, name, nn.Sequential(nn.ReLU(), nn.Hardtanh(0.0, 6.0)))
            else:
                swap(child)

    swap(twin)
    return twin.eval()


def run_pgc(
    cam_class, model: nn.Module, layer: nn.Module, images: torch.Tensor, classes, **kw
) -> torch.Tensor:
    cam = cam_class(model=model, target_layers=[layer], **kw)
    try:
        out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return torch.from_numpy(out)


PEERS = {
    "gradcam": "GradCAM",
    "gradcampp_approx": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}


# blocks.15 sits before conv_head/ReLU6, so its gradients vary in space and Grad-CAM, HiResCAM, XGrad-CAM
# and LayerCAM differ there; at head_act (right before GAP+FC) those four coincide, so only Grad-CAM and
# Grad-CAM++ are compared there.
@pytest.mark.parametrize(
    ("layer", "names"), [("head_act", ["gradcam", "gradcampp_approx"]), ("blocks.15", list(PEERS))]
)
def test_gradient_cams_match_pytorch_grad_cam(lite0, inputs, layer, names):
    module = lite0.model.get_submodule(layer)
    classes = build_explainer("gradcam", lite0).explain(inputs, TopK(1)).classes[:, 0]
    maps = {}
    for name in names:
        maps[name] = to_input_size(
            build_explainer(name, lite0, target_layer=layer)(inputs, classes), (224, 224)
        )
        reference = run_pgc(getattr(pgc, PEERS[name]), lite0.model, module, inputs, classes)
        for i in range(len(inputs)):
            assert corr(maps[name][i], reference[i]) >= 0.99, (name, layer, i)
    if layer == "blocks.15":  # the comparison is not vacuous: the methods really differ here
        assert corr(maps["gradcam"], maps["hirescam"]) < 0.99
        assert corr(maps["gradcam"], maps["layercam"]) < 0.99


def test_gradcam_matches_captum_layer_gradcam_at_inner_layer(lite0, inputs):
    explanation = build_explainer("gradcam", lite0, target_layer="blocks.15").explain(inputs, TopK(1))
    oracle = captum_attr.LayerGradCam(lite0.model, lite0.model.blocks[15])
    reference = oracle.attribute(inputs, target=explanation.classes[:, 0].tolist(), relu_attributions=True)
    for ours, theirs in zip(explanation.maps[:, 0], reference[:, 0].detach(), strict=True):
        assert corr(ours, theirs) >= 0.99


def test_eigencam_matches_pytorch_grad_cam_projection(lite0, inputs):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    ours = build_explainer("eigencam", lite0, relu=False)(inputs, TopK(1))
    with capture_activations(lite0.model, ["head_act"]) as store, torch.no_grad():
        lite0.model(inputs)
        acts = store.activations["head_act"]
    reference = torch.from_numpy(get_2d_projection(acts.numpy()))
    for i in range(len(inputs)):
        # An SVD's sign is arbitrary; ours is fixed to agree with the activation energy.
        assert abs(corr(ours[i], reference[i])) >= 0.99
        assert corr(ours[i], acts[i].sum(0)) > 0


def test_scorecam_matches_pytorch_grad_cam(lite0, small):
    """pytorch-grad-cam's Score-CAM variant (logit scores, softmax over channels, align_corners=True) on
    an inner 40-channel layer so the ~40 masked forward passes per implementation stay cheap."""
    explainer = build_explainer(
        "scorecam",
        lite0,
        target_layer="blocks.4",
        score="logit",
        baseline="none",
        channel_softmax=True,
        align_corners=True,
        chunk_size=40,
    )
    explanation = explainer.explain(small, TopK(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = run_pgc(
            pgc.ScoreCAM, lite0.model, lite0.model.blocks[4], small, explanation.classes[:, 0]
        )
    mine = to_input_size(explanation.maps[:, 0], small.shape[-2:])
    assert corr(mine[0], reference[0]) >= 0.99


def run_torchcam(
    cls_name: str, model: nn.Module, layer: str, images: torch.Tensor, classes, **kw
) -> torch.Tensor:
    """torchcam's maps ``[B, h, w]`` (ReLU'd and min-max normalised per map, at the layer's resolution)."""
    import torchcam.methods

    try:
        with getattr(torchcam.methods, cls_name)(
            model, target_layer=layer, input_shape=tuple(images.shape[1:]), **kw
        ) as extractor:
            scores = model(images)
            (maps,) = extractor(class_idx=[int(c) for c in classes], scores=scores)
    finally:
        model.zero_grad(set_to_none=True)
    assert count_hooks(model) == 0
    return maps.detach()


# torchcam as a second peer for the gradient CAMs that differ from Grad-CAM at blocks.15. Not used for:
# - Grad-CAM++: torchcam 0.5's GradCAMpp divides ``alpha[mask]`` in place on an advanced-indexing copy, so
#   the division is lost and it computes alpha = g^2 (its maps equal ours with that alpha, corr 1.0);
# - Score-CAM: torchcam min-max scales the activations *before* upsampling them to masks, the authors' code
#   and pytorch-grad-cam after (as we do); that order alone costs 0.94-0.99 correlation on Lite0 (with
#   torchcam's order our weights reproduce its maps at corr 1.0).
@pytest.mark.parametrize(("name", "peer"), [("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")])
def test_gradient_cams_match_torchcam(lite0, inputs, name, peer):
    pytest.importorskip("torchcam")
    explanation = build_explainer(name, lite0, target_layer="blocks.15").explain(inputs, TopK(1))
    reference = run_torchcam(peer, lite0.model, "blocks.15", inputs, explanation.classes[:, 0])
    for i in range(len(inputs)):
        assert corr(explanation.maps[i, 0], reference[i]) >= 0.99, (name, i)


def test_ablationcam_closed_form_matches_pytorch_grad_cam(lite0, inputs):
    """Our GAP+FC closed form against pytorch-grad-cam's ablation loop run on the head (pool -> fc) fed
    with the real head_act activations: the same 1280 ablations, each by a forward pass of the head."""
    explainer = build_explainer("ablationcam", lite0)
    explanation = explainer.explain(inputs[:1], TopK(1))
    assert explainer.last_mode == "analytic"
    with capture_activations(lite0.model, ["head_act"]) as store, torch.no_grad():
        lite0.model(inputs[:1])
    head = nn.Sequential(nn.Identity(), lite0.model.pool, nn.Flatten(1), lite0.model.fc).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = run_pgc(
            pgc.AblationCAM,
            head,
            head[0],
            store.activations["head_act"],
            explanation.classes[:, 0],
            batch_size=16,
        )
    assert corr(explanation.maps[0, 0], reference[0]) >= 0.99


def test_ablationcam_generic_paths_match_pytorch_grad_cam(lite0, small):
    """The generic path at the 32-channel stem, where no closed form applies: the torch.fx cut re-runs only
    the blocks and head after the stem (its skip connections included) on the ablated copies. Against
    pytorch-grad-cam's ablation loop. (The whole-model re-run, for untraceable models, is checked against
    brute force in test_methods_tiny.py.)"""
    explainer = build_explainer("ablationcam", lite0, target_layer="stem_act", chunk_size=32)
    explanation = explainer.explain(small, TopK(1))
    assert explainer.last_mode == "graph"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = run_pgc(
            pgc.AblationCAM,
            lite0.model,
            lite0.model.stem_act,
            small,
            explanation.classes[:, 0],
            batch_size=32,
        )
    mine = to_input_size(explanation.maps[:, 0], small.shape[-2:])
    assert corr(mine[0], reference[0]) >= 0.99
    assert count_hooks(lite0.model) == 0


def test_backprop_equals_captum_saliency(lite0, inputs):
    explanation = build_explainer("backprop", lite0).explain(inputs[:2], TopK(1))
    reference = captum_attr.Saliency(lite0.model).attribute(
        inputs[:2].clone().requires_grad_(True), target=explanation.classes[:, 0].tolist(), abs=True
    )
    torch.testing.assert_close(explanation.extra["rgb"][:, 0].abs(), reference, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(explanation.maps[:, 0], reference.amax(1), atol=1e-6, rtol=1e-4)


def test_guided_backprop_matches_captum_and_pytorch_grad_cam(lite0, inputs, relu_twin):
    from pytorch_grad_cam import GuidedBackpropReLUModel

    image = inputs[1:2]
    explanation = build_explainer("guided_backprop", lite0).explain(image, TopK(1))
    classes = explanation.classes[:, 0]
    rgb = explanation.extra["rgb"][:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum_ref = captum_attr.GuidedBackprop(relu_twin).attribute(
            image.clone().requires_grad_(True), target=classes.tolist()
        )
    assert corr(rgb[0], captum_ref[0]) >= 0.99
    pgc_ref = GuidedBackpropReLUModel(relu_twin, device="cpu")(image, int(classes[0]))
    assert corr(rgb[0], torch.from_numpy(pgc_ref).permute(2, 0, 1)) >= 0.99
    # Guided and plain gradients really differ (the guidance hooks took effect on ReLU6 modules).
    plain = build_explainer("backprop", lite0).explain(image, classes).extra["rgb"][:, 0]
    assert abs(corr(rgb[0], plain[0])) < 0.5
    assert count_hooks(lite0.model) == 0


def test_guided_gradcam_matches_captum(lite0, inputs, relu_twin):
    image = inputs[:1]
    explanation = build_explainer("guided_gradcam", lite0).explain(image, TopK(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = (
            captum_attr.GuidedGradCam(relu_twin, relu_twin.head_act)
            .attribute(
                image.clone().requires_grad_(True),
                target=explanation.classes[:, 0].tolist(),
                interpolate_mode="bilinear",
            )
            .detach()
        )
    assert explanation.maps.shape == (1, 1, 224, 224)
    assert corr(explanation.extra["rgb"][0, 0], reference[0]) >= 0.99


def test_cam_is_gradcam_times_area_for_gap_fc(lite0, inputs):
    """For GAP+FC, dS/dA_k = W[c, k] / (h*w): CAM = (h*w) * un-rectified Grad-CAM, exactly."""
    cam = build_explainer("cam", lite0, relu=False)(inputs, TopK(2))
    gradcam = build_explainer("gradcam", lite0, relu=False)(inputs, TopK(2))
    torch.testing.assert_close(cam, 49 * gradcam, atol=1e-3, rtol=1e-4)
    assert (cam > 0).any() and (cam < 0).any()


def test_counterfactual_is_relu_of_negated_gradcam(lite0, inputs):
    raw = build_explainer("gradcam", lite0, target_layer="blocks.15", relu=False)(inputs, TopK(1))
    counter = build_explainer("counterfactual_gradcam", lite0, target_layer="blocks.15")(inputs, TopK(1))
    torch.testing.assert_close(counter, F.relu(-raw), atol=1e-6, rtol=1e-5)
    assert (counter > 0).any()


def test_gradcampp_exact_versus_approximation(lite0, inputs):
    """exact = e^S * approximation-without-epsilon; the epsilon shrinks weak-gradient channels."""
    exact = build_explainer("gradcampp", lite0, relu=False)
    approx = build_explainer("gradcampp_approx", lite0, relu=False)
    no_eps = build_explainer("gradcampp_approx", lite0, relu=False)
    no_eps.eps = 0.0
    e, a, z = (m.explain(inputs, TopK(1)) for m in (exact, approx, no_eps))
    scale = torch.exp(e.logits.gather(1, e.classes).double()).float()[:, :, None, None]
    torch.testing.assert_close(e.maps, scale * z.maps, rtol=1e-4, atol=0.0)
    # alpha ratios approx/exact per element, where the gradient is positive
    with capture_activations(lite0.model, ["head_act"]) as store:
        logits = lite0.model(inputs[:1])
        acts = store.activations["head_act"]
        (grads,) = torch.autograd.grad(logits[0, e.classes[0, 0]], acts)
    ratio = approx.alphas(acts.detach(), grads) / exact.alphas(acts.detach(), grads)
    ratio = ratio[grads > 0]
    assert ratio.max() <= 1.0 + 1e-6
    assert ratio.min() < 0.5
    for i in range(len(inputs)):
        assert corr(e.maps[i], a.maps[i]) > 0.99


@pytest.mark.parametrize("name", ["gradcam", "layercam", "cam", "eigencam"])
def test_bf16_autocast_is_close_to_fp32(lite0, inputs, name):
    full = build_explainer(name, lite0).explain(inputs[:2], TopK(1))
    half = build_explainer(name, lite0, autocast="bf16").explain(inputs[:2], full.classes)
    assert half.maps.dtype == torch.float32
    for i in range(2):
        assert corr(full.maps[i], half.maps[i]) > 0.95


@pytest.mark.parametrize("name", ["cam", "gradcampp", "eigencam", "ablationcam"])
def test_batch_equals_single_images_on_lite0(lite0, inputs, name):
    explainer = build_explainer(name, lite0)
    targets = torch.tensor([281, 967])
    batched = explainer(inputs[:2], targets)
    singles = torch.cat([explainer(inputs[i : i + 1], targets[i : i + 1]) for i in range(2)])
    scale = batched.abs().amax().clamp_min(1e-12)
    assert float((batched - singles).abs().amax() / scale) < 1e-4


def test_occlusion_matches_captum_occlusion_for_every_target(lite0, small):
    """Windows that tile the input exactly (no border-aligned extra row), two targets from one set of
    occluded passes, incremental re-inference and full forwards: all equal Captum's ``Occlusion``."""
    fast = build_explainer("occlusion", lite0, patch_size=32, stride=32).explain(small, TopK(2))
    dense = build_explainer("occlusion", lite0, patch_size=32, stride=32, incremental=False).explain(
        small, TopK(2)
    )
    assert fast.maps.shape == (1, 2, 128, 128)
    torch.testing.assert_close(fast.maps, dense.maps, atol=1e-4, rtol=0)
    occlusion = captum_attr.Occlusion(lite0.model)
    for k in range(2):
        reference = occlusion.attribute(
            small,
            sliding_window_shapes=(3, 32, 32),
            strides=(3, 32, 32),
            baselines=0.0,
            target=fast.classes[:, k].tolist(),
        )
        torch.testing.assert_close(fast.maps[:, k], reference[:, 0], atol=1e-4, rtol=0)
    # The top-1 class loses more where its evidence is; the map is not flat.
    assert float(fast.maps[:, 0].amax()) > float(fast.maps[:, 0].amin())
