"""Methods on tiny hand-built models: hand computations and identities for the methods without a peer,
target specs, batch invariance, hooks, memory, token (ViT-style) layers and the pgc/ adapter."""

from __future__ import annotations

import gc
import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods import METHODS, TopK, build_explainer
from evalcam.methods.base import capture_activations, merge_layers
from evalcam.methods.cam import CAM
from evalcam.methods.gradcam import GradCAMPlusPlus
from evalcam.methods.gradients import GuidedBackprop
from evalcam.methods.hooks import count_hooks
from evalcam.methods.reshape import tokens_to_grid
from evalcam.methods.rise import RISE, rise_grids, rise_masks
from evalcam.methods.score_ablation import AblationCAM, ScoreCAM
from evalcam.models.bundle import ModelBundle, Preprocess


class TinyCNN(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> [features] -> GAP -> fc. One in-place ReLU module is used twice."""

    def __init__(self, classes: int = 5, inplace: bool = True, shared: bool = True) -> None:
        super().__init__()
        first = nn.ReLU(inplace=inplace)
        second = first if shared else nn.ReLU(inplace=inplace)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), first, nn.Conv2d(4, 6, 3, padding=1, stride=2), second
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TinyDeep(nn.Module):
    """[features] -> 1x1 conv -> ReLU -> GAP -> fc: gradients at ``features`` vary in space, and the
    score is piecewise linear in them (the Grad-CAM++ derivation's assumption)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyViT(nn.Module):
    """Patch embedding + class token + two attention blocks; a block's output is tokens [B, 1+16, C].
    The head reads the class token only, so the explained layer is ``blocks.0`` (its patch tokens reach
    the class token through the second block's attention, as with the usual ViT target layers)."""

    def __init__(self, dim: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(_Block(dim), _Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.norm(self.blocks(tokens)[:, 0]))


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(t)


def make(cls: type[nn.Module], seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kw).eval()


def bundle_of(model: nn.Module, layer: str = "features", classifier: str | None = "fc") -> ModelBundle:
    return ModelBundle(
        model=model,
        name="tiny",
        target_layer=layer,
        preprocess=Preprocess(size=(16, 16)),
        classifier=classifier,
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def features_of(model: nn.Module, images: torch.Tensor, layer: str = "features") -> torch.Tensor:
    with capture_activations(model, [layer]) as store, torch.no_grad():
        model(images)
    return store.activations[layer]


# --- methods without a peer: hand computations and identities -------------------------------------


def test_cam_is_the_classifier_rows_times_activations(images):
    model = make(TinyCNN)
    acts = features_of(model, images)
    classes = torch.tensor([[0, 3], [1, 1], [4, 2]])
    maps = build_explainer("cam", bundle_of(model), relu=False).explain(images, classes).maps
    for b in range(3):
        for k in range(2):
            expected = (model.fc.weight[classes[b, k]][:, None, None] * acts[b]).sum(0)
            torch.testing.assert_close(maps[b, k], expected)
    # Grad-CAM identity for GAP+FC: CAM = (h*w) * un-rectified Grad-CAM (8x8 features here)
    gradcam = build_explainer("gradcam", bundle_of(model), relu=False).explain(images, classes).maps
    torch.testing.assert_close(maps, 64 * gradcam, rtol=1e-4, atol=1e-6)


def test_cam_callable_target_goes_through_the_linear_head(images):
    model = make(TinyCNN)
    cam = build_explainer("cam", bundle_of(model), relu=False)
    by_index = cam(images, torch.tensor([2, 2, 2]))
    difference = cam(images, lambda out: 2 * out[:, 2] - out[:, 0])
    expected = 2 * by_index - cam(images, torch.tensor([0, 0, 0]))
    torch.testing.assert_close(
        by_index,
        build_explainer("gradcam", bundle_of(model), relu=False)(images, torch.tensor([2, 2, 2])) * 64,
        rtol=1e-4,
        atol=1e-6,
    )
    torch.testing.assert_close(difference, expected, rtol=1e-4, atol=1e-6)


def test_cam_refuses_models_without_gap_fc_head(images):
    deep = make(TinyDeep)  # a 1x1 conv and a ReLU sit between the target layer and the pooling
    with pytest.raises(
        ValueError, match=r"^CAM needs a global-average-pool \+ linear head.*takes 4 features"
    ):
        build_explainer("cam", bundle_of(deep, classifier="head.4"))(images, torch.tensor([0, 1, 2]))
    max_pooled = make(TinyCNN)
    max_pooled.pool = nn.AdaptiveMaxPool2d(1)
    with pytest.raises(ValueError, match="is not the global average of the target layer"):
        build_explainer("cam", bundle_of(max_pooled))(images, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="names no classifier"):
        build_explainer("cam", bundle_of(make(TinyCNN), classifier=None))
    with pytest.raises(ValueError, match="one target layer"):
        CAM(make(TinyCNN), "features.0,features", classifier="fc")
    assert count_hooks(deep) == 0 and count_hooks(max_pooled) == 0


def test_counterfactual_is_relu_of_negated_raw_gradcam(images):
    model = make(TinyDeep)
    raw = build_explainer("gradcam", bundle_of(model), relu=False)(images, TopK(2))
    counter = build_explainer("counterfactual_gradcam", bundle_of(model))(images, TopK(2))
    torch.testing.assert_close(counter, F.relu(-raw))
    assert (counter > 0).any() and (raw > 0).any()


def test_gradcampp_exact_uses_true_derivatives_of_exp_score():
    """Second and third derivatives of Y = exp(S) taken element by element with autograd (no closed
    form), plugged into Eq. 19 / Eq. 10 of the paper."""
    model = make(TinyDeep, seed=3)
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    acts = features_of(model, image).detach().requires_grad_(True)  # [1, 3, 4, 4]
    cls = 1
    y = torch.exp(model.head(acts)[0, cls])
    (d1,) = torch.autograd.grad(y, acts, create_graph=True)
    second, third = [], []
    for i in range(acts.numel()):
        (row,) = torch.autograd.grad(d1.flatten()[i], acts, create_graph=True)
        second.append(row.flatten()[i].detach())
        third.append(torch.autograd.grad(row.flatten()[i], acts, retain_graph=True)[0].flatten()[i])
    a, d1 = acts.detach(), d1.detach()
    d2, d3 = torch.stack(second).view_as(a), torch.stack(third).view_as(a)
    denominator = 2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3
    alpha = torch.where(denominator != 0, d2 / denominator, torch.zeros(()))
    weights = (alpha * F.relu(d1)).sum(dim=(2, 3))
    expected = (weights[:, :, None, None] * a).sum(1)

    ours = GradCAMPlusPlus(model, "features", relu=False)(image, torch.tensor([cls]))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)
    assert (d1 != d1[..., :1, :1]).any()  # gradients vary in space: not a degenerate case


def test_xgradcam_layercam_hirescam_by_hand(images):
    model = make(TinyDeep)
    acts = features_of(model, images).detach().requires_grad_(True)
    scores = model.head(acts)[:, 2]
    (grads,) = torch.autograd.grad(scores.sum(), acts)
    a, g = acts.detach(), grads
    target = torch.tensor([2, 2, 2])
    total = a.sum(dim=(2, 3))
    x_w = torch.where(total > 0, (g * a).sum(dim=(2, 3)) / total.clamp_min(1e-30), 0.0)
    expected = {
        "xgradcam": F.relu((x_w[:, :, None, None] * a).sum(1)),
        "layercam": F.relu((F.relu(g) * a).sum(1)),
        "hirescam": F.relu((g * a).sum(1)),
    }
    for name, want in expected.items():
        torch.testing.assert_close(build_explainer(name, bundle_of(model))(images, target), want)


def naive_scorecam(
    model: nn.Module, images: torch.Tensor, acts: torch.Tensor, cls: torch.Tensor
) -> torch.Tensor:
    """Score-CAM one image and one channel at a time: weight = p(X * H_k) - p(0)."""
    out = []
    with torch.no_grad():
        for b in range(len(images)):
            base = model(torch.zeros_like(images[b : b + 1])).softmax(1)[0, cls[b]]
            weights = []
            for k in range(acts.shape[1]):
                up = F.interpolate(acts[b : b + 1, k : k + 1], size=images.shape[-2:], mode="bilinear")
                span = up.max() - up.min()
                mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                weights.append(model(images[b : b + 1] * mask).softmax(1)[0, cls[b]] - base)
            out.append(F.relu((torch.stack(weights)[:, None, None] * acts[b]).sum(0)))
    return torch.stack(out)


def test_scorecam_paper_defaults_by_hand_and_chunking(images):
    model = make(TinyDeep)
    cls = torch.tensor([0, 3, 4])
    expected = naive_scorecam(model, images, features_of(model, images), cls)
    for chunk in (1, 4, 1000):
        ours = ScoreCAM(model, "features", chunk_size=chunk)(images, cls)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert expected.amax() > 0


def naive_rise(model, images, masks, classes, p):
    """Eq. 6 of the RISE paper one mask and one image at a time."""
    out = torch.zeros(len(images), *images.shape[-2:])
    with torch.no_grad():
        for b, image in enumerate(images):
            for mask in masks:
                prob = model((image * mask)[None]).softmax(-1)[0, classes[b]]
                out[b] += prob * mask
    return out / (len(masks) * p)


def test_rise_is_eq6_by_hand_for_any_chunking(images):
    model = make(TinyCNN)
    cls = torch.tensor([0, 3, 4])
    grids, shifts = rise_grids(40, 4, 0.3, seed=3)
    expected = naive_rise(model, images, rise_masks(grids, shifts, (16, 16)), cls, 0.3)
    for chunk in (1, 7, 1000):
        ours = RISE(model, num_masks=40, cells=4, p=0.3, seed=3, chunk_size=chunk)(images, cls)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert expected.std() > 0
    other_seed = RISE(model, num_masks=40, cells=4, p=0.3, seed=4)(images, cls)
    assert not torch.allclose(other_seed, expected)


def test_rise_masks_are_the_authors_construction():
    """Against the RISE authors' recipe written independently with scikit-image: each s x s grid is resized
    bilinearly (order=1, mode="reflect") to (s + 1) * C px, C = ceil(H / s), then cropped at the mask's shift.
    Equal everywhere, the border band included, for a square and a non-square input."""
    resize = pytest.importorskip("skimage.transform").resize
    s = 7
    for height, width in ((224, 224), (100, 150)):
        cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
        grids, shifts = rise_grids(12, s, 0.5, seed=0)
        masks = rise_masks(grids, shifts, (height, width))
        assert masks.shape == (12, height, width) and masks.min() >= 0 and masks.max() <= 1
        up = ((s + 1) * cell_h, (s + 1) * cell_w)
        for i in range(12):
            big = resize(grids[i].double().numpy(), up, order=1, mode="reflect", anti_aliasing=False)
            dy, dx = int(shifts[i, 0] * cell_h), int(shifts[i, 1] * cell_w)
            theirs = torch.from_numpy(big[dy : dy + height, dx : dx + width]).float()
            torch.testing.assert_close(masks[i], theirs, atol=1e-5, rtol=0)
    # On average a fraction p of the image is kept.
    many = rise_masks(*rise_grids(2000, s, 0.25, seed=1), (224, 224))
    assert abs(float(many.mean()) - 0.25) < 0.01


def test_scorecam_runs_one_pass_for_all_constant_channels(images):
    """Dead (constant) channels all mask the input to the zero image: the result is the brute-force one,
    but the network sees each varying (image, channel) pair once and the zero image once for the rest."""
    model = make(TinyDeep)
    with torch.no_grad():
        model.features[0].weight[1] = 0.0
        model.features[0].bias[1] = -1.0  # channel 1 is 0 after the ReLU, for every image
    cls = torch.tensor([0, 3, 4])
    acts = features_of(model, images)
    assert acts[:, 1].abs().amax() == 0 and (acts.flatten(2).amax(2) > acts.flatten(2).amin(2)).sum() == 6
    expected = naive_scorecam(model, images, acts, cls)
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    try:
        ours = ScoreCAM(model, "features", chunk_size=4)(images, cls)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    # images once (activations), the zero image (baseline and dead channels alike), 6 varying pairs
    assert sum(seen) == 3 + 1 + 6 and max(seen) <= 4


def test_scorecam_callable_target_sees_its_own_batch_layout(images):
    model = make(TinyDeep)
    cls = torch.tensor([0, 3, 4])
    scorecam = ScoreCAM(model, "features", chunk_size=5, score="logit", baseline="none")
    by_index = scorecam(images, cls)
    by_function = scorecam(images, lambda out: out.gather(1, cls[:, None]).squeeze(1))
    torch.testing.assert_close(by_function, by_index)


def naive_ablation(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, cls: torch.Tensor, acts: torch.Tensor
) -> torch.Tensor:
    """Ablation-CAM by brute force: zero one channel, re-run, (y - y_k) / y."""
    with torch.no_grad():
        y = model(images).gather(1, cls[:, None])[:, 0]
        weights = []
        for k in range(acts.shape[1]):

            def zero(_m, _i, out, k=k):
                out = out.clone()
                out[:, k] = 0
                return out

            handle = layer.register_forward_hook(zero)
            try:
                weights.append((y - model(images).gather(1, cls[:, None])[:, 0]) / y)
            finally:
                handle.remove()
    return F.relu(torch.einsum("cb,bchw->bhw", torch.stack(weights), acts))


def test_ablationcam_modes_agree_with_brute_force(images):
    model = make(TinyCNN)
    cls = torch.tensor([0, 3, 4])
    expected = naive_ablation(model, model.features, images, cls, features_of(model, images))
    tail = lambda a: model.fc(model.pool(a).flatten(1))  # noqa: E731
    modes = (("auto", 64), ("analytic", 64), ("rerun", 1), ("rerun", 7), ("tail", 4), ("graph", 5))
    for mode, chunk in modes:
        explainer = AblationCAM(model, "features", classifier="fc", mode=mode, tail=tail, chunk_size=chunk)
        torch.testing.assert_close(explainer(images, cls), expected, rtol=1e-4, atol=1e-6)
        assert explainer.last_mode == ("analytic" if mode == "auto" else mode)
    # without a GAP+FC head, auto cuts the traced graph after the layer
    deep = make(TinyDeep)
    fallback = AblationCAM(deep, "features", classifier="head.4")
    deep_expected = naive_ablation(deep, deep.features, images, cls, features_of(deep, images))
    torch.testing.assert_close(fallback(images, cls), deep_expected, rtol=1e-4, atol=1e-6)
    assert fallback.last_mode == "graph"
    with pytest.raises(ValueError, match="mode=analytic needs a GAP\\+FC head"):
        AblationCAM(deep, "features", classifier="head.4", mode="analytic")(images, cls)
    assert count_hooks(deep) == 0 and count_hooks(model) == 0


class TinyResidual(nn.Module):
    """A skip connection jumps over the target layer ``features``; with ``by_batch`` the head reshapes by a
    batch size read before that layer (what a graph cut cannot tile)."""

    def __init__(self, classes: int = 5, by_batch: bool = False) -> None:
        super().__init__()
        self.by_batch = by_batch
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.fc = nn.Linear(64 if by_batch else 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        stem = self.stem(x)
        h = self.head(self.features(stem) + stem)
        return self.fc(h.mean(1).reshape(n, -1) if self.by_batch else h.mean((2, 3)))


def test_ablationcam_graph_mode_reruns_only_the_layers_after_the_target(images):
    model = make(TinyResidual)
    cls = torch.tensor([0, 3, 4])
    calls = {"stem": 0, "head": 0}
    counters = [
        getattr(model, name)[0].register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in calls
    ]
    try:
        expected = naive_ablation(model, model.features, images, cls, features_of(model, images))
        calls.update(stem=0, head=0)
        explainer = AblationCAM(model, "features", chunk_size=3)  # 3 images: one channel per pass
        torch.testing.assert_close(explainer(images, cls), expected, rtol=1e-4, atol=1e-6)
        assert explainer.last_mode == "graph"
        # stem: the explained forward and the one that records the skip connection; never per channel.
        # head: those two, the check on unablated copies, and one pass per ablated channel.
        assert calls == {"stem": 2, "head": 3 + 4}
        calls.update(stem=0, head=0)
        AblationCAM(model, "features", mode="rerun", chunk_size=3)(images, cls)
        assert calls["stem"] == 1 + 4  # what the graph cut saves
    finally:
        for handle in counters:
            handle.remove()


def test_ablationcam_graph_cut_that_cannot_tile_the_batch_falls_back_to_rerun(images):
    model = make(TinyResidual, by_batch=True)
    cls = torch.tensor([0, 3, 4])
    expected = naive_ablation(model, model.features, images, cls, features_of(model, images))
    explainer = AblationCAM(model, "features", chunk_size=6)
    torch.testing.assert_close(explainer(images, cls), expected, rtol=1e-4, atol=1e-6)
    assert explainer.last_mode == "rerun"
    with pytest.raises(ValueError, match="mode=graph"):
        AblationCAM(model, "features", mode="graph")(images, cls)
    assert count_hooks(model) == 0


def test_ablationcam_graph_is_retraced_when_a_submodule_is_replaced(images):
    model = make(TinyResidual)
    cls = torch.tensor([0, 3, 4])
    explainer = AblationCAM(model, "features", chunk_size=3)
    explainer(images, cls)  # traces and caches the cut
    torch.manual_seed(5)
    model.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())  # same model object, new weights after the cut
    expected = naive_ablation(model, model.features, images, cls, features_of(model, images))
    torch.testing.assert_close(explainer(images, cls), expected, rtol=1e-4, atol=1e-6)
    assert explainer.last_mode == "graph"


def test_ablationcam_callable_target_closed_form(images):
    model = make(TinyCNN)
    explainer = AblationCAM(model, "features", classifier="fc", chunk_size=2)
    fn = lambda out: out[:, 1] - 0.5 * out[:, 3]  # noqa: E731
    rerun = AblationCAM(model, "features", mode="rerun", chunk_size=5)
    torch.testing.assert_close(explainer(images, fn), rerun(images, fn), rtol=1e-4, atol=1e-6)
    assert explainer.last_mode == "analytic"


def test_eigencam_sign_points_at_the_active_region():
    """Activations: one strong blob on a weak background. The first component separates the two; the
    sign fix makes the blob positive whatever sign the SVD returned."""
    model = make(TinyCNN)
    explainer = build_explainer("eigencam", bundle_of(model), relu=False)
    acts = torch.full((2, 6, 8, 8), 0.1)
    acts[:, :, 2:4, 5:7] = torch.linspace(1.0, 3.0, 6)[:, None, None]
    acts[1] *= 2
    maps = explainer.combine(acts, None, torch.zeros(2))
    assert (maps[:, 2:4, 5:7].amin(dim=(1, 2)) > 0).all()
    assert (maps[:, 0, 0] < 0).all()
    torch.testing.assert_close(maps[1], 2 * maps[0], rtol=1e-4, atol=1e-5)


# --- API behaviour common to every method -----------------------------------------------------------

# The CNN sweep; the attention methods have their own on a toy ViT (test_methods_transformers.py).
TINY_METHODS = sorted(
    name for name in METHODS if name not in ("center", "random") and METHODS[name].cls.applies_to(TinyCNN())
)
# Fewer random masks than RISE's 4000 keep the API checks cheap; the algorithm is checked by hand above.
CHEAP = {
    "rise": {"num_masks": 64},
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"nt_samples": 4},
    "expected_gradients": {"n_samples": 4, "num_baselines": 3},
    "deepliftshap": {"num_baselines": 3},
    "kernelshap": {"n_samples": 24, "n_segments": 9, "compactness": 100.0},
    "lime": {"n_samples": 24, "n_segments": 9, "compactness": 100.0},
    "smoothgradcampp": {"num_samples": 3},
}


@pytest.mark.parametrize("name", [*TINY_METHODS, "pgc/GradCAM"])
def test_batch_equals_single_images_and_target_specs(images, name):
    model = make(TinyCNN)
    explainer = build_explainer(name, bundle_of(model), **CHEAP.get(name, {}))
    classes = torch.tensor([[1, 3], [0, 2], [4, 4]])
    batched = explainer.explain(images, classes)
    assert batched.maps.shape[:2] == (3, 2) and batched.maps.dtype == torch.float32
    singles = torch.cat([explainer.explain(images[i : i + 1], classes[i : i + 1]).maps for i in range(3)])
    torch.testing.assert_close(batched.maps, singles, rtol=1e-4, atol=1e-6)
    # [B, K] columns equal one-column calls; TopK equals the explicit top classes
    column = explainer(images, classes[:, 1])
    torch.testing.assert_close(batched.maps[:, 1], column, rtol=1e-4, atol=1e-6)
    top = explainer.explain(images, TopK(2))
    torch.testing.assert_close(top.classes, top.logits.topk(2, dim=1).indices)
    torch.testing.assert_close(top.maps, explainer.explain(images, top.classes).maps, rtol=1e-4, atol=1e-6)
    assert count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", TINY_METHODS)
def test_callable_target_scales_the_map(images, name):
    """f = 2 * logit_c: maps linear in the score double, Guided Grad-CAM (a product of two) quadruples,
    ratio-based and class-agnostic ones do not move."""
    model = make(TinyCNN)
    explainer = build_explainer(name, bundle_of(model), **CHEAP.get(name, {}))
    by_index = explainer(images, torch.tensor([2, 2, 2]))
    by_function = explainer(images, lambda out: 2.0 * out[:, 2])
    assert by_function.shape == by_index.shape
    # FullGrad min-max scales every term per image
    factor = {"eigencam": 1.0, "ablationcam": 1.0, "guided_gradcam": 4.0, "fullgrad": 1.0}.get(name, 2.0)
    if name.startswith(("gradcampp", "smoothgradcampp")):  # alpha is not scale-free (g^3 term)
        assert torch.isfinite(by_function).all() and not torch.allclose(by_function, factor * by_index)
    else:  # Score-CAM: callables see probabilities, so f doubles the confidence increases
        torch.testing.assert_close(by_function, factor * by_index, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", [*TINY_METHODS, "pgc/GradCAM"])
def test_explainer_follows_a_swapped_model(images, name):
    """Metrics such as the sanity check point an explainer at a modified copy of the model
    (``explainer.model = copy``); nothing may stay bound to the original modules."""
    original, other = make(TinyCNN, seed=0), make(TinyCNN, seed=5)
    explainer = build_explainer(name, bundle_of(original), **CHEAP.get(name, {}))
    explainer.model = other
    expected = build_explainer(name, bundle_of(other), **CHEAP.get(name, {}))(images, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(explainer(images, torch.tensor([0, 1, 2])), expected)
    assert count_hooks(original) == 0 and count_hooks(other) == 0


def test_multiple_target_layers_merge_per_layer_maps(images):
    model = make(TinyCNN)
    both = build_explainer("gradcam", bundle_of(model), target_layer="features.0, features")(images, TopK(1))
    first = build_explainer("gradcam", bundle_of(model), target_layer="features.0")(images, TopK(1))
    last = build_explainer("gradcam", bundle_of(model), target_layer="features")(images, TopK(1))
    torch.testing.assert_close(both, merge_layers([first, last]))
    assert both.shape == (3, 16, 16)
    listed = build_explainer("scorecam", bundle_of(model), target_layer=["features.0", "features"])
    assert listed(images, TopK(1)).shape == (3, 16, 16)


def test_hooks_removed_when_the_target_function_raises(images):
    model = make(TinyCNN)

    def broken(out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    for name in TINY_METHODS:
        explainer = build_explainer(name, bundle_of(model), **CHEAP.get(name, {}))
        if name != "eigencam":  # class-agnostic: never evaluates its targets
            with pytest.raises(RuntimeError, match="boom"):
                explainer(images, broken)
            assert count_hooks(model) == 0, name
        with pytest.raises(ValueError, match="out of range"):
            explainer(images, torch.tensor([0, 1, 99]))
        assert count_hooks(model) == 0, name


def test_guided_backprop_with_shared_inplace_relu_matches_captum(images):
    """Our hooks on one in-place ReLU used twice vs captum on the same weights with two separate
    out-of-place ReLUs."""
    captum_attr = pytest.importorskip("captum.attr")
    shared = make(TinyCNN, inplace=True, shared=True)
    separate = make(TinyCNN, inplace=False, shared=False)
    separate.load_state_dict(shared.state_dict())
    cls = torch.tensor([0, 1, 2])
    ours = GuidedBackprop(shared).explain(images, cls).extra["rgb"][:, 0]
    reference = captum_attr.GuidedBackprop(separate).attribute(
        images.clone().requires_grad_(True), target=cls.tolist()
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
    plain = build_explainer("backprop", bundle_of(shared)).explain(images, cls).extra["rgb"][:, 0]
    assert not torch.allclose(ours, plain)
    assert count_hooks(shared) == 0


def test_no_memory_growth_over_1000_batches():
    model = make(TinyCNN)
    batch = torch.randn(2, 3, 16, 16)
    names = ["gradcam", "gradcampp", "cam", "eigencam", "scorecam", "ablationcam", "guided_gradcam"]
    explainers = [
        build_explainer(n, bundle_of(model), chunk_size=8)
        if n == "scorecam"
        else build_explainer(n, bundle_of(model))
        for n in names
    ]
    explainers.append(AblationCAM(model, "features", mode="rerun", chunk_size=4))

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on torch's deprecated module aliases warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    # One intra-op thread: these convolutions are so small that a shared, loaded machine spends most of
    # their time synchronising the thread pool (7x slower with 2 threads), which 1000 batches would feel.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for explainer in explainers:  # warm-up
            explainer(batch, TopK(2))
        before = live_tensors()
        for step in range(1000):
            explainers[step % len(explainers)](batch, TopK(2))
    finally:
        torch.set_num_threads(threads)
    assert live_tensors() <= before
    assert count_hooks(model) == 0


# --- token layers -------------------------------------------------------------------------------------


def test_vit_tokens_gradcam_by_hand_and_against_pytorch_grad_cam(images):
    model = make(TinyViT)
    cls = torch.tensor([1, 2, 3])
    ours = build_explainer("gradcam", bundle_of(model, layer="blocks.0", classifier="head"), reshape="vit")(
        images, cls
    )
    with capture_activations(model, ["blocks.0"]) as store:
        out = model(images)
        tokens = store.activations["blocks.0"]
        (grads,) = torch.autograd.grad(out.gather(1, cls[:, None]).sum(), tokens)
    a, g = tokens_to_grid(tokens.detach()), tokens_to_grid(grads)
    assert a.shape == (3, 8, 4, 4)
    expected = F.relu((g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1))
    torch.testing.assert_close(ours, expected)

    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def pgc_reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).transpose(2, 3).transpose(1, 2)

    cam = pgc.GradCAM(model=model, target_layers=[model.blocks[0]], reshape_transform=pgc_reshape)
    try:
        reference = torch.from_numpy(
            cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in cls])
        )
    finally:
        cam.activations_and_grads.release()
    mine = F.interpolate(ours[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    for i in range(3):
        r = torch.corrcoef(torch.stack([mine[i].flatten(), reference[i].flatten()]))[0, 1]
        assert r >= 0.99


def test_vit_tokens_ablation_and_scorecam(images):
    model = make(TinyViT)
    cls = torch.tensor([1, 2, 3])
    explainer = AblationCAM(model, "blocks.0", classifier="head", reshape="vit", chunk_size=6)
    maps = explainer(images, cls)
    assert explainer.last_mode == "rerun" and maps.shape == (3, 4, 4)
    # brute force: zero one channel of every token (the channel is the tokens' last dim)
    tokens = features_of(model, images, "blocks.0")
    with torch.no_grad():
        y = model(images).gather(1, cls[:, None])[:, 0]
        weights = []
        for k in range(tokens.shape[2]):

            def zero(_m, _i, out, k=k):
                out = out.clone()
                out[..., k] = 0
                return out

            handle = model.blocks[0].register_forward_hook(zero)
            try:
                weights.append((y - model(images).gather(1, cls[:, None])[:, 0]) / y)
            finally:
                handle.remove()
    expected = F.relu(torch.einsum("cb,bchw->bhw", torch.stack(weights), tokens_to_grid(tokens)))
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)
    score = ScoreCAM(model, "blocks.0", reshape="vit")(images, cls)
    torch.testing.assert_close(
        score, naive_scorecam(model, images, tokens_to_grid(tokens), cls), rtol=1e-4, atol=1e-6
    )


# --- registry, configs and the pgc/ adapter ------------------------------------------------------------


def test_pgc_adapter_errors_are_one_line(monkeypatch):
    pytest.importorskip("pytorch_grad_cam")
    bundle = bundle_of(make(TinyCNN))
    with pytest.raises(ValueError, match=r"no CAM class 'NoSuchCAM'; available: .*GradCAM.*ScoreCAM") as err:
        build_explainer("pgc/NoSuchCAM", bundle)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match="pip install grad-cam"):
        build_explainer("pgc/GradCAM", bundle)


def test_pgc_adapter_returns_input_resolution_maps_with_our_api(images):
    pytest.importorskip("pytorch_grad_cam")
    model = make(TinyCNN)
    explainer = build_explainer("pgc/ScoreCAM", bundle_of(model))
    explanation = explainer.explain(images, TopK(2))
    assert explanation.maps.shape == (3, 2, 16, 16)
    assert explainer(images, torch.tensor([0, 1, 2])).shape == (3, 16, 16)
    ours = build_explainer("gradcam", bundle_of(model))(images, TopK(1))
    theirs = build_explainer("pgc/GradCAM", bundle_of(model))(images, TopK(1))
    mine = F.interpolate(ours[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    for i in range(3):
        assert torch.corrcoef(torch.stack([mine[i].flatten(), theirs[i].flatten()]))[0, 1] >= 0.99
    assert count_hooks(model) == 0


def test_unknown_method_and_bad_options_are_clear():
    bundle = bundle_of(make(TinyCNN))
    with pytest.raises(ValueError, match=r"unknown method 'nope'; available: .*scorecam.*pgc/<ClassName>"):
        build_explainer("nope", bundle)
    with pytest.raises(ValueError, match="score must be"):
        build_explainer("scorecam", bundle, score="probability")
    with pytest.raises(ValueError, match="rise score must be"):
        build_explainer("rise", bundle, score="softmax")
    with pytest.raises(ValueError, match="0 < p <= 1"):
        build_explainer("rise", bundle, p=0)
    with pytest.raises(ValueError, match="unknown autocast dtype"):
        build_explainer("gradcam", bundle, autocast="int8")
    with pytest.raises(ValueError, match="unknown reshape"):
        build_explainer("gradcam", bundle, reshape="swirl")
