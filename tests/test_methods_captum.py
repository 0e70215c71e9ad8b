"""Captum-backed methods against direct Captum calls, Integrated Gradients' completeness and DeepLIFT's
summation-to-delta on EfficientNet-Lite0, LRP against zennit's own canonizer, Smooth Grad-CAM++ and
FullGrad by their formulas, and the one-line refusals."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evalcam.cli import pgc_override
from evalcam.methods import TopK, build_explainer
from evalcam.methods.captum_methods import slic_masks, unshare_activations
from evalcam.methods.hooks import count_hooks
from evalcam.models.bundle import ModelBundle, Preprocess

captum_attr = pytest.importorskip("captum.attr")


class Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> ReLU -> GAP -> fc, separate out-of-place ReLUs (Captum's DeepLift
    needs them; evalcam splits reused ones itself, checked below)."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        relu = nn.ReLU(inplace=shared)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            relu,
            nn.Conv2d(6, 8, 3, padding=1, stride=2),
            relu if shared else nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def net(shared: bool = False) -> Net:
    torch.manual_seed(0)
    model = Net(shared)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
        model.features[1].weight.uniform_(0.5, 1.5)
        model.features[1].bias.uniform_(-0.2, 0.2)
        model.fc.weight.mul_(100.0)  # scores of order 10: attributions well above the 1e-5 tolerance
    return model.eval()


def bundle(model: nn.Module) -> ModelBundle:
    return ModelBundle(model=model, name="net", target_layer="features", preprocess=Preprocess((32, 32)))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))


CLASSES = torch.tensor([[1, 3], [0, 2], [4, 4]])


def seeded(seed: int, call):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return call()


def gauss(num: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# (name, params, reference(model, x [1 or B], target list/int) -> attributions, stochastic)
CASES = {
    "integrated_gradients": (
        {"n_steps": 16},
        lambda m, x, t: captum_attr.IntegratedGradients(m).attribute(
            x, baselines=0.0, target=t, n_steps=16, method="gausslegendre"
        ),
        False,
    ),
    "input_x_gradient": ({}, lambda m, x, t: captum_attr.InputXGradient(m).attribute(x, target=t), False),
    "deeplift": ({}, lambda m, x, t: captum_attr.DeepLift(m).attribute(x, baselines=0.0, target=t), False),
    "deepliftshap": (
        {"num_baselines": 4},
        lambda m, x, t: captum_attr.DeepLiftShap(m).attribute(x, baselines=gauss(4), target=t),
        False,
    ),
    "smoothgrad": (
        {"nt_samples": 6},
        lambda m, x, t: captum_attr.NoiseTunnel(captum_attr.Saliency(m)).attribute(
            x, nt_type="smoothgrad", nt_samples=6, stdevs=0.15 * float(x.max() - x.min()), target=t, abs=False
        ),
        True,
    ),
    "expected_gradients": (
        {"n_samples": 6, "num_baselines": 4},
        lambda m, x, t: captum_attr.GradientShap(m).attribute(x, baselines=gauss(4), n_samples=6, target=t),
        True,
    ),
    "kernelshap": (
        {"n_samples": 40, "n_segments": 9, "compactness": 100.0},
        lambda m, x, t: captum_attr.KernelShap(m).attribute(
            x,
            baselines=0.0,
            target=t,
            n_samples=40,
            perturbations_per_eval=50,
            feature_mask=slic_masks(x, 9, 100.0).expand(-1, 3, -1, -1),
        ),
        True,
    ),
    "lime": (
        {"n_samples": 40, "n_segments": 9, "compactness": 100.0},
        lambda m, x, t: captum_attr.Lime(m).attribute(
            x,
            baselines=0.0,
            target=t,
            n_samples=40,
            perturbations_per_eval=50,
            feature_mask=slic_masks(x, 9, 100.0).expand(-1, 3, -1, -1),
        ),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_captum_methods_equal_direct_captum_calls(images, name):
    """Batch of 3, two target columns: every map equals Captum's own call (channel sum) to 1e-5."""
    params, reference, stochastic = CASES[name]
    model = net()
    ours = build_explainer(name, bundle(model), **params).explain(images, CLASSES)
    assert ours.maps.shape == (3, 2, 32, 32)
    for k in range(CLASSES.shape[1]):
        if stochastic:  # one call per image under the method's seed, as the adapter documents
            expected = torch.cat(
                [
                    seeded(0, lambda i=i, k=k: reference(model, images[i : i + 1], int(CLASSES[i, k])))
                    for i in range(3)
                ]
            )
        else:
            expected = reference(model, images, CLASSES[:, k].tolist())
        diff = (ours.maps[:, k] - expected.detach().sum(1)).abs().max()
        assert float(diff) <= 1e-5, (name, k, float(diff))
        assert float(expected.abs().max()) > 1e-3  # not a vacuous comparison
    assert count_hooks(model) == 0


def test_abs_sum_reduction_and_global_rng_untouched(images):
    model = net()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    signed = build_explainer("smoothgrad", bundle(model), nt_samples=4)(images, TopK(1))
    absolute = build_explainer("smoothgrad", bundle(model), nt_samples=4, reduce="abs_sum")(images, TopK(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert (absolute >= signed - 1e-6).all() and not torch.allclose(absolute, signed)
    with pytest.raises(ValueError, match=r"^reduce must be one of sum, abs_sum, got 'max'$"):
        build_explainer("input_x_gradient", bundle(model), reduce="max")


def test_deeplift_splits_a_reused_inplace_relu_into_one_module_per_use(images):
    """Captum refuses a ReLU module used twice; the split copy computes the same function, and our DeepLift
    on the shared model equals Captum's on an equivalent model with separate ReLUs."""
    shared, separate = net(shared=True), net(shared=False)
    separate.load_state_dict(shared.state_dict())
    twin = unshare_activations(shared, images)
    assert twin is not shared
    torch.testing.assert_close(twin(images), shared(images))
    ours = build_explainer("deeplift", bundle(shared))(images, torch.tensor([0, 1, 2]))
    expected = captum_attr.DeepLift(separate).attribute(images, baselines=0.0, target=[0, 1, 2]).sum(1)
    assert float((ours - expected).abs().max()) <= 1e-5
    assert count_hooks(shared) == 0


def test_captum_any_class_by_name_and_cli_route(images):
    model = net()
    ours = build_explainer("captum/Deconvolution", bundle(model))(images, torch.tensor([0, 1, 2]))
    expected = captum_attr.Deconvolution(model).attribute(images, target=[0, 1, 2]).sum(1)
    assert float((ours - expected).abs().max()) <= 1e-5
    layer = build_explainer("captum/LayerGradCam", bundle(model)).explain(images, torch.tensor([0, 1, 2]))
    reference = captum_attr.LayerGradCam(model, model.features).attribute(images, target=[0, 1, 2])
    torch.testing.assert_close(layer.maps[:, 0], reference.sum(1))
    assert pgc_override("method=captum/Deconvolution") == [
        "method=captum",
        "method.name=captum/Deconvolution",
    ]
    with pytest.raises(ValueError, match=r"^Captum has no attribution class 'Nope'; available: .*Saliency"):
        build_explainer("captum/Nope", bundle(model))


def test_superpixel_methods_refuse_a_single_superpixel():
    model = net()
    with pytest.raises(
        ValueError, match=r"^lime: SLIC found 1 superpixel in a 32x32 image; raise n_segments"
    ):
        build_explainer("lime", bundle(model), n_samples=8, n_segments=1)(torch.randn(1, 3, 32, 32), [0])


# --- EfficientNet-Lite0 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo(lite0, photos):
    x = lite0.preprocess([photos["chelsea"]], "cpu")
    return F.interpolate(x, size=(96, 96), mode="bilinear", antialias=True, align_corners=False)


def test_integrated_gradients_completeness_on_lite0(lite0, photo):
    """sum of IG attributions = F(x) - F(baseline) within Captum's reported convergence delta."""
    target = int(lite0.model(photo).argmax())
    explainer = build_explainer("integrated_gradients", lite0, n_steps=50, internal_batch_size=25)
    total = float(explainer(photo, torch.tensor([target])).sum())
    _, delta = captum_attr.IntegratedGradients(lite0.model).attribute(
        photo, baselines=0.0, target=target, n_steps=50, internal_batch_size=25, return_convergence_delta=True
    )
    with torch.no_grad():
        gap = float(lite0.model(photo)[0, target] - lite0.model(torch.zeros_like(photo))[0, target])
    assert abs(total - gap) <= abs(float(delta)) + 1e-4
    # 50 Gauss-Legendre steps on a 96 px photo: the path integral is within a few % of the gap
    assert abs(float(delta)) < 0.05 * abs(gap), (float(delta), gap)


def test_deeplift_on_lite0_with_shared_relu6_equals_captum_on_the_split_twin(lite0, photo):
    """Lite0 reuses one ReLU6 module per block, which Captum's DeepLift refuses: our DeepLift equals
    Captum's on the split, ReLU-rewritten twin (which computes the same logits)."""
    target = int(lite0.model(photo).argmax())
    ours = build_explainer("deeplift", lite0)(photo, torch.tensor([target]))
    twin = unshare_activations(lite0.model, photo)
    torch.testing.assert_close(twin(photo), lite0.model(photo))
    expected = captum_attr.DeepLift(twin).attribute(photo, baselines=0.0, target=target).sum(1)
    assert float((ours - expected).abs().max()) <= 1e-5
    assert count_hooks(lite0.model) == 0


def test_deeplift_sums_to_delta_on_a_relu_network(images):
    """Rescale rule: sum of attributions = F(x) - F(0) exactly on a ReLU/BatchNorm network."""
    model = net(shared=True)  # reused in-place ReLU: split by the adapter
    maps = build_explainer("deeplift", bundle(model))(images, torch.tensor([0, 1, 2]))
    with torch.no_grad():
        gap = model(images)[torch.arange(3), [0, 1, 2]] - model(torch.zeros_like(images))[0, [0, 1, 2]]
    torch.testing.assert_close(maps.sum((1, 2)), gap, rtol=1e-4, atol=1e-4)


def test_lrp_on_lite0_merges_every_batchnorm_and_restores_the_model(lite0, photo):
    before = {k: v.clone() for k, v in lite0.model.state_dict().items()}
    maps = build_explainer("lrp", lite0)(photo, TopK(2))
    assert maps.shape == (1, 2, 96, 96) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    for key, value in lite0.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert count_hooks(lite0.model) == 0


# --- LRP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_equals_zennit_with_its_sequential_canonizer(images, composite):
    zennit = pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

    model = net()
    ours = build_explainer("lrp", bundle(model), composite=composite).explain(images, CLASSES).maps
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    if composite == "epsilon_plus_flat":
        comp = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    else:
        comp = EpsilonGammaBox(
            low=-mean / std, high=(1 - mean) / std, canonizers=[SequentialMergeBatchNorm()]
        )
    for k in range(2):
        with Gradient(model=model, composite=comp) as attributor:
            _, relevance = attributor(images.clone().requires_grad_(True), torch.eye(5)[CLASSES[:, k]])
        assert float((ours[:, k] - relevance.sum(1)).abs().max()) <= 1e-5
        assert float(relevance.abs().max()) > 1e-4
    assert zennit is not None and count_hooks(model) == 0


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.norm = nn.LayerNorm([4, 32, 32])
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.features(x)).mean((2, 3)))


def test_lrp_refuses_a_layer_without_a_rule_in_one_line(images):
    with pytest.raises(ValueError) as info:
        build_explainer("lrp", bundle(WithLayerNorm().eval()))(images, torch.tensor([0, 1, 2]))
    message = str(info.value)
    assert message == (
        "lrp cannot explain this model: layer 'norm' (LayerNorm) has no LRP rule in zennit or Captum; "
        "use gradcam, integrated_gradients, input_x_gradient, smoothgrad or deeplift instead"
    )


# --- Smooth Grad-CAM++ and FullGrad ----------------------------------------------------------------


def test_smoothgradcampp_without_noise_is_gradcampp_without_exp_score(images):
    """sigma = 0: D1 = g, D2 = g^2, D3 = g^3, so the map is Grad-CAM++'s (paper form) divided by e^S."""
    model = net()
    smooth = build_explainer("smoothgradcampp", bundle(model), num_samples=2, noise_level=0.0)
    exact = build_explainer("gradcampp", bundle(model)).explain(images, CLASSES)
    ours = smooth.explain(images, CLASSES)
    scores = exact.logits.gather(1, CLASSES)
    torch.testing.assert_close(ours.maps * scores.exp()[..., None, None], exact.maps, rtol=1e-4, atol=1e-6)


def test_smoothgradcampp_by_hand_with_noise(images):
    model = net()
    explainer = build_explainer("smoothgradcampp", bundle(model), num_samples=3, noise_level=0.2, seed=4)
    ours = explainer(images, torch.tensor([0, 1, 2]))
    noise = explainer.noise(images)
    acts = model.features(images).detach()
    grads = []
    for s in range(3):
        a = model.features(images + noise[s])
        score = model.fc(model.pool(a).flatten(1)).gather(1, torch.tensor([[0], [1], [2]])).sum()
        grads.append(torch.autograd.grad(score, a)[0])
    g = torch.stack(grads)
    d1, d2, d3 = g.mean(0), g.pow(2).mean(0), g.pow(3).mean(0)
    den = 2 * d2 + acts.sum((2, 3), keepdim=True) * d3
    alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1.0), 0.0)
    weights = (alpha * d1.clamp_min(0)).sum((2, 3))
    expected = torch.einsum("bc,bchw->bhw", weights, acts).clamp_min(0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)
    assert ours.abs().max() > 0


def test_fullgrad_by_hand(images):
    model = net()
    ours = build_explainer("fullgrad", bundle(model))(images, torch.tensor([0, 1, 2]))
    x = images.clone().requires_grad_(True)
    conv1 = model.features[0](x)
    bn = model.features[1](conv1)
    conv2 = model.features[3](model.features[2](bn))
    out = model.fc(model.pool(model.features[4](conv2)).flatten(1))
    score = out.gather(1, torch.tensor([[0], [1], [2]])).sum()
    gx, g1, gb, g2 = torch.autograd.grad(score, [x, conv1, bn, conv2])
    norm = model.features[1]
    bn_bias = norm.bias - norm.weight * norm.running_mean / torch.sqrt(norm.running_var + norm.eps)

    def psi(t: torch.Tensor) -> torch.Tensor:
        t = t.abs()
        low = t.flatten(1).amin(1).view(-1, 1, 1, 1)
        t = (t - low) / (t.flatten(1).amax(1).view(-1, 1, 1, 1) - low)
        return F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False).sum(1)

    terms = [
        psi(gx * images),
        psi(g1 * model.features[0].bias.view(1, -1, 1, 1)),
        psi(gb * bn_bias.view(1, -1, 1, 1)),
        psi(g2 * model.features[3].bias.view(1, -1, 1, 1)),
    ]
    torch.testing.assert_close(ours, sum(terms).detach(), rtol=1e-4, atol=1e-5)


def test_fullgrad_matches_pytorch_grad_cam_on_lite0(lite0, photo):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # 128 px: Lite0's last bias terms are 4x4, so the interpolation conventions (cv2 vs torch) matter less
    photo = F.interpolate(photo, size=(128, 128), mode="bilinear", align_corners=False)
    target = int(lite0.model(photo).argmax())
    ours = build_explainer("fullgrad", lite0)(photo, torch.tensor([target]))
    cam = pgc.FullGrad(model=lite0.model, target_layers=[])
    try:
        theirs = torch.as_tensor(cam(input_tensor=photo, targets=[ClassifierOutputTarget(target)]))
    finally:
        cam.activations_and_grads.release()
        lite0.model.zero_grad(set_to_none=True)
    a, b = ours.flatten(), theirs.flatten().float()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) >= 0.99


CLEAN_PASS = {  # methods whose logits come from Captum's own first pass: (params, direct Captum call)
    name: CASES[name][:2] for name in ("input_x_gradient", "deeplift", "deepliftshap")
}


def forward_counter(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("name", sorted(CLEAN_PASS))
@pytest.mark.parametrize("k", [1, 2])
def test_clean_pass_methods_take_logits_from_captums_pass(images, name, k):
    """Top-k and class targets: one model pass per target column and nothing else (no logits pass, no
    counting pass after the first call), logits equal to the model's, maps equal to Captum called with
    the top-k classes to 1e-5."""
    params, reference = CLEAN_PASS[name]
    model = net()
    explainer = build_explainer(name, bundle(model), **params)
    explainer.explain(images, TopK(k))  # builds the DeepLift twin (one counting pass), cached afterwards
    calls = forward_counter(model)
    with torch.no_grad():
        logits = model(images)
    top = logits.topk(k, dim=1).indices
    calls[0] = 0
    for targets in (TopK(k), top):
        ours = explainer.explain(images, targets)
        torch.testing.assert_close(ours.logits, logits)
        assert torch.equal(ours.classes, top)
        for j in range(k):
            expected = reference(model, images, top[:, j].tolist()).detach().sum(1)
            assert float((ours.maps[:, j] - expected).abs().max()) <= 1e-5, (name, targets, j)
    assert calls[0] == 2 * k + 2 * k  # ours: k passes per explain, twice; Captum's references: k
    model._forward_hooks.clear()
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name", sorted(CLEAN_PASS))
def test_clean_pass_refuses_a_bad_class_in_one_line_on_every_call(images, name):
    """The range is checked on each call inside Captum's first pass (no class count cached by model id,
    which a freed model's reused id could fool), before Captum indexes with the class; hooks removed."""
    params, _ = CLEAN_PASS[name]
    model = net()
    explainer = build_explainer(name, bundle(model), **params)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"^target class out of range: model has 5 classes \(0\.\.4\)$"):
            explainer(images, torch.tensor([0, 1, 7]))
        explainer(images, CLASSES)
    other = build_explainer(name, bundle(nn.Sequential(model, nn.Linear(5, 3)).eval()), **params)
    with pytest.raises(ValueError, match=r"^target class out of range: model has 3 classes \(0\.\.2\)$"):
        other(images, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"^got 2 targets for a batch of 3 images$"):
        explainer(images, torch.tensor([0, 1]))
    assert count_hooks(model) == 0


def test_clean_pass_without_the_clean_rows_falls_back_to_a_logits_pass(images):
    """A first pass that does not hold the clean batch (checked, not assumed) costs a separate logits pass
    instead of recording the wrong rows; top-k classes then come from the true logits."""
    from evalcam.methods.captum_methods import _CleanPass

    model = net()
    with torch.no_grad():
        logits = model(images)
    clean = _CleanPass(model, images, repeat=1, top_k=TopK(2))
    shifted = images + 1.0
    scores = clean(shifted)
    torch.testing.assert_close(clean.logits, logits)
    assert torch.equal(clean.classes, logits.topk(2, dim=1).indices)
    with torch.no_grad():
        torch.testing.assert_close(scores, model(shifted).gather(1, clean.classes[:, :1]).squeeze(1))


@pytest.mark.parametrize("name", ["deeplift", "lrp"])
def test_structure_caches_follow_replaced_parameters_and_modules(images, name):
    """DeepLift's twin and LRP's BatchNorm pairs are cached per model; a replaced parameter or module
    rebuilds them, so the maps equal a fresh explainer's (a stale twin would keep the old weights)."""
    model = net(shared=True)
    explainer = build_explainer(name, bundle(model))
    before = explainer(images, CLASSES)
    torch.testing.assert_close(explainer(images, CLASSES), before)
    model.fc.weight = nn.Parameter(model.fc.weight.detach().flip(0))
    fresh = build_explainer(name, bundle(model))(images, CLASSES)
    after = explainer(images, CLASSES)
    torch.testing.assert_close(after, fresh)
    assert float((after - before).abs().max()) > 1e-3
    model.features[1] = nn.BatchNorm2d(6).eval()
    fresh = build_explainer(name, bundle(model))(images, CLASSES)
    torch.testing.assert_close(explainer(images, CLASSES), fresh)
    assert count_hooks(model) == 0


def test_bench_rows_time_the_adapter_against_captum(images):
    from evalcam.bench.attribution import bench_rows, format_rows

    rows = bench_rows(bundle(net()), images, ["input_x_gradient", "deeplift"], repeats=1)
    assert [r["method"] for r in rows] == ["input_x_gradient", "deeplift"]
    assert [r["peer"] for r in rows] == ["captum.attr.InputXGradient", "captum.attr.DeepLift"]
    assert all(r["ours_s"] > 0 and r["peer_s"] > 0 and r["ratio"] == r["ours_s"] / r["peer_s"] for r in rows)
    assert format_rows(rows).splitlines()[1].startswith("input_x_gradient")
