"""The transformer track: attention read through hooks, attention rollout and Chefer et al.'s transformer
attribution against independent computations, CAMs on token layers (ViT, Swin), the loaders' errors.

No ViT weights install here: every model is randomly initialised (see README, "Transformers")."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evalcam.methods import METHODS, TopK, build_explainer, capture_activations
from evalcam.methods.attention import record_attention
from evalcam.methods.hooks import count_hooks
from evalcam.models import ModelBundle, Preprocess, load_model
from evalcam.models.deit import deit
from evalcam.models.torchvision_models import WeightsNotFoundError


def toy_vit(seed: int = 0, classes: int = 5) -> ModelBundle:
    """torchvision VisionTransformer, 2 blocks, 2 heads, width 16, a 4x4 patch grid at 32 px."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return deit(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
            num_classes=classes,
            seed=seed,
        )


@pytest.fixture(scope="module")
def vit() -> ModelBundle:
    return toy_vit()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class ToyTransformer(nn.Module):
    """Two pre-norm blocks of nn.MultiheadAttention in the sequence-first layout (batch_first=False), a
    class token, a head on it: the hooks must follow either layout."""

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.attns = nn.ModuleList([nn.MultiheadAttention(dim, heads), nn.MultiheadAttention(dim, heads)])
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for _ in range(2)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).permute(2, 0, 1)  # [T, B, C]
        t = torch.cat([self.cls.expand(1, x.shape[0], -1), t], 0)
        for norm, attn, mlp in zip(self.norms, self.attns, self.mlps, strict=True):
            h = norm(t)
            t = t + attn(h, h, h, need_weights=False)[0]
            t = t + mlp(t)
        return self.head(t[0])


def toy_transformer() -> ToyTransformer:
    torch.manual_seed(3)
    return ToyTransformer().eval()


def block_inputs(model: ToyTransformer, images: torch.Tensor) -> list[np.ndarray]:
    """The normalised tokens each attention module receives, [B, T, C] float64."""
    seen: list[np.ndarray] = []
    handles = [
        a.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].detach().permute(1, 0, 2).double().numpy())
        )
        for a in model.attns
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return seen


def numpy_attention(mha: nn.MultiheadAttention, x: np.ndarray) -> np.ndarray:
    """softmax(Q K^T / sqrt(d)) per head from the module's weights: [B, heads, T, T]."""
    w = mha.in_proj_weight.detach().double().numpy()
    b = mha.in_proj_bias.detach().double().numpy()
    e, h = mha.embed_dim, mha.num_heads
    d = e // h
    q = x @ w[:e].T + b[:e]
    k = x @ w[e : 2 * e].T + b[e : 2 * e]
    out = np.zeros((x.shape[0], h, x.shape[1], x.shape[1]))
    for head in range(h):
        s = (
            q[..., head * d : (head + 1) * d]
            @ np.swapaxes(k[..., head * d : (head + 1) * d], 1, 2)
            / math.sqrt(d)
        )
        s = np.exp(s - s.max(-1, keepdims=True))
        out[:, head] = s / s.sum(-1, keepdims=True)
    return out


# --- reading the attention -------------------------------------------------------------------


def test_recorded_attention_is_softmax_qk_and_leaves_the_output_unchanged(images):
    model = toy_transformer()
    with torch.no_grad():
        plain = model(images)
        with record_attention(model) as attentions:
            hooked = model(images)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)
    assert count_hooks(model) == 0
    expected = [numpy_attention(a, x) for a, x in zip(model.attns, block_inputs(model, images), strict=True)]
    assert [tuple(a.shape) for a in attentions] == [(3, 2, 17, 17)] * 2
    for ours, reference in zip(attentions, expected, strict=True):
        np.testing.assert_allclose(ours.double().numpy(), reference, rtol=1e-4, atol=1e-6)
    # torch's own need_weights path agrees with the recorded probabilities too
    x = torch.from_numpy(block_inputs(model, images)[0]).float().permute(1, 0, 2)
    _, theirs = model.attns[0](x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(attentions[0], theirs, rtol=1e-5, atol=1e-6)


def test_torchvision_vit_keeps_its_output_under_the_hooks(vit, images):
    with torch.no_grad():
        plain = vit.model(images)
        with record_attention(vit.model) as attentions:
            hooked = vit.model(images)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)
    assert len(attentions) == 2 and attentions[0].shape == (3, 2, 17, 17)
    torch.testing.assert_close(attentions[1].sum(-1), torch.ones(3, 2, 17))
    assert count_hooks(vit.model) == 0


# --- attention rollout by hand ---------------------------------------------------------------


def test_rollout_equals_the_papers_formula_by_hand(images):
    model = toy_transformer()
    bundle = ModelBundle(model=model, name="toy", target_layer="norms.1", preprocess=Preprocess((16, 16)))
    ours = build_explainer("attention_rollout", bundle)(images, torch.tensor([0, 1, 2]))
    attentions = [
        numpy_attention(a, x) for a, x in zip(model.attns, block_inputs(model, images), strict=True)
    ]
    for i in range(3):
        joint = np.eye(17)
        for a in attentions:  # Abnar & Zuidema: A~ = 0.5 W_att + 0.5 I, re-normalised, multiplied upwards
            step = 0.5 * a[i].mean(0) + 0.5 * np.eye(17)
            step /= step.sum(1, keepdims=True)
            joint = step @ joint
        np.testing.assert_allclose(ours[i].double().numpy(), joint[0, 1:].reshape(4, 4), rtol=1e-4, atol=1e-7)
    # class-agnostic: another target, same map; max fusion differs from mean
    torch.testing.assert_close(
        build_explainer("attention_rollout", bundle)(images, torch.tensor([3, 3, 3])), ours
    )
    fused_max = build_explainer("attention_rollout", bundle, head_fusion="max")(
        images, torch.tensor([0, 1, 2])
    )
    assert not torch.allclose(fused_max, ours)
    assert count_hooks(model) == 0


# --- Chefer et al. transformer attribution -----------------------------------------------------


def direct_chefer(model: ToyTransformer, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The toy's forward written out with explicit attention; dy/dA by autograd; Eq. 13 (A for R) / 14."""
    p = dict(model.named_parameters())
    t = F.conv2d(images, p["patch.weight"], p["patch.bias"], stride=8).flatten(2).transpose(1, 2)
    t = torch.cat([p["cls"].transpose(0, 1).expand(images.shape[0], 1, -1), t], 1)  # [B, T, C]
    attentions = []
    for i in range(2):
        mha = model.attns[i]
        h = F.layer_norm(t, (8,), p[f"norms.{i}.weight"], p[f"norms.{i}.bias"])
        q, k, v = (
            F.linear(h, w, b)
            for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3), strict=True)
        )
        q, k, v = (z.reshape(z.shape[0], z.shape[1], 2, 4).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(2, 3) / 2.0, -1)
        attentions.append(a)
        mixed = (a @ v).transpose(1, 2).reshape(t.shape)
        t = t + F.linear(mixed, mha.out_proj.weight, mha.out_proj.bias)
        t = t + F.gelu(F.linear(t, p[f"mlps.{i}.0.weight"], p[f"mlps.{i}.0.bias"]))
    logits = F.linear(t[:, 0], p["head.weight"], p["head.bias"])
    grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), attentions)
    relevance = torch.eye(17).expand(images.shape[0], 17, 17)
    for a, g in zip(attentions, grads, strict=True):
        bar = torch.eye(17) + (g * a).clamp(min=0).mean(1)
        relevance = bar @ relevance
    return relevance[:, 0, 1:].reshape(-1, 4, 4).detach()


def test_transformer_attribution_equals_eq13_14_written_out(images):
    model = toy_transformer()
    bundle = ModelBundle(model=model, name="toy", target_layer="norms.1", preprocess=Preprocess((16, 16)))
    explainer = build_explainer("transformer_attribution", bundle)
    classes = torch.tensor([[0, 3], [1, 1], [2, 0]])
    ours = explainer.explain(images, classes).maps
    for k in range(2):
        torch.testing.assert_close(
            ours[:, k], direct_chefer(model, images, classes[:, k]), rtol=1e-4, atol=1e-6
        )
    # class-sensitive, unlike rollout
    assert not torch.allclose(ours[0, 0], ours[0, 1])
    assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_one_block_gradient_is_the_closed_form(images):
    """y = w_c . out_proj(sum_h A_h[0, :] V_h)[class token] + b: dy/dA_h[0, j] = w_c W_o[:, h] v_hj, so with
    one block the relevance row is (1 + mean_h ReLU(A_h[0, j] w_c W_o[:, h] v_hj)) for j > 0."""

    class OneBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 8, stride=8)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.patch(x).flatten(2).transpose(1, 2)], 1)
            return self.head(self.attn(t, t, t, need_weights=False)[0][:, 0])

    torch.manual_seed(5)
    model = OneBlock().eval()
    bundle = ModelBundle(model=model, name="one", target_layer="attn", preprocess=Preprocess((32, 32)))
    ours = build_explainer("transformer_attribution", bundle)(images, torch.tensor([2, 0, 1]))
    with torch.no_grad(), record_attention(model) as attentions:
        model(images)
        t = torch.cat([model.cls.expand(3, -1, -1), model.patch(images).flatten(2).transpose(1, 2)], 1)
        v = F.linear(t, *[w.chunk(3)[2] for w in (model.attn.in_proj_weight, model.attn.in_proj_bias)])
    for i, c in enumerate([2, 0, 1]):
        a = attentions[0][i]  # [h, T, T]
        row = torch.zeros(17)
        for h in range(2):
            wo = model.attn.out_proj.weight[:, h * 4 : (h + 1) * 4]
            grad = (model.head.weight[c] @ wo) @ v[i, :, h * 4 : (h + 1) * 4].T  # dy/dA_h[0, j]
            row += (a[h, 0] * grad).clamp(min=0) / 2
        torch.testing.assert_close(ours[i], row[1:].reshape(4, 4), rtol=1e-4, atol=1e-6)


# --- CAMs on token layers -----------------------------------------------------------------------


def test_gradcam_on_vit_tokens_drops_the_class_token_by_hand(vit, images):
    layer = "encoder.layers.encoder_layer_1.ln_1"
    assert vit.target_layer == layer and vit.reshape == "vit"
    classes = torch.tensor([4, 0, 2])
    ours = build_explainer("gradcam", vit)(images, classes)  # the bundle's reshape, not a method option
    with capture_activations(vit.model, [layer]) as store:
        out = vit.model(images.requires_grad_(False).clone().requires_grad_(True))
        tokens = store.activations[layer]
        (grads,) = torch.autograd.grad(out.gather(1, classes[:, None]).sum(), tokens)
    assert tokens.shape == (3, 17, 16)
    a = tokens.detach()[:, 1:].reshape(3, 4, 4, 16)  # row-major patch order, class token dropped
    g = grads[:, 1:].reshape(3, 4, 4, 16)
    expected = F.relu((a * g.mean(dim=(1, 2), keepdim=True)).sum(-1))
    torch.testing.assert_close(ours, expected)
    assert ours.flatten(1).amax(1).gt(0).all()


def test_swin_stage_outputs_are_spatial_and_gradcam_reads_them_channels_last(images):
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    swin = SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2], num_classes=5
    ).eval()
    # A change confined to image patch (0, 0) moves the first (unshifted) block's output only inside the
    # top-left 2x2 window: the block output is in image layout, windows already merged back.
    poked = images.clone()
    poked[:, :, :4, :4] += 1.0
    with torch.no_grad(), capture_activations(swin, ["features.1.0"]) as store:
        swin(images)
        before = store.activations["features.1.0"].clone()
        swin(poked)
        after = store.activations["features.1.0"]
    changed = (after - before).abs().amax(dim=(0, 3)) > 1e-6
    assert changed.shape == (8, 8) and changed[:2, :2].all() and changed.sum() == 4
    layer = "features.3.1.norm1"  # last stage, last block: [B, 4, 4, 16] after the shifted block before it
    bundle = ModelBundle(
        model=swin, name="swin", target_layer=layer, preprocess=Preprocess((32, 32)), reshape="nhwc"
    )
    classes = torch.tensor([1, 2, 3])
    ours = build_explainer("gradcam", bundle)(images, classes)
    with capture_activations(swin, [layer]) as store:
        out = swin(images.clone().requires_grad_(True))
        act = store.activations[layer]
        (grad,) = torch.autograd.grad(out.gather(1, classes[:, None]).sum(), act)
    assert act.shape == (3, 4, 4, 16)
    torch.testing.assert_close(ours, F.relu((act.detach() * grad.mean(dim=(1, 2), keepdim=True)).sum(-1)))


def test_attention_methods_refuse_cnns_and_swin_in_one_line():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    bundle = ModelBundle(model=cnn, name="cnn", target_layer="1", preprocess=Preprocess((8, 8)))
    for name in ("attention_rollout", "transformer_attribution"):
        with pytest.raises(
            ValueError, match=rf"^{name} needs a transformer .* Sequential has none .* use gradcam"
        ) as err:
            build_explainer(name, bundle)
        assert "\n" not in str(err.value)
        assert not METHODS[name].cls.applies_to(cnn)
    assert METHODS["gradcam"].cls.applies_to(cnn)


def test_reshape_mismatch_and_missing_class_token_are_clear(vit, images):
    with pytest.raises(ValueError, match=r"reshape=vit expects tokens \[B, T, C\] .*reshape=none"):
        build_explainer("gradcam", vit, target_layer="conv_proj")(images, TopK(1))
    maps = build_explainer("gradcam", vit, target_layer="conv_proj", reshape="none")(images, TopK(1))
    assert maps.shape == (3, 4, 4)


# --- every method on the toy ViT: batch independence, hook clean-up -------------------------------

# CAM needs a GAP+FC head; LIME and KernelSHAP need SLIC superpixels, of which a 32 px noise image has one
# (they refuse it in one line; tests/test_methods_captum.py covers them); LRP refuses transformers.
VIT_METHODS = sorted(
    n
    for n in METHODS
    if n not in ("cam", "center", "random", "kernelshap", "lime")
    and METHODS[n].cls.applies_to(toy_vit().model)
)
CHEAP = {"rise": {"num_masks": 32}}


@pytest.mark.parametrize("name", VIT_METHODS)
def test_every_method_on_a_vit_is_batch_independent_and_removes_its_hooks(vit, images, name):
    explainer = build_explainer(name, vit, **CHEAP.get(name, {}))
    classes = torch.tensor([[1, 3], [0, 2], [4, 4]])
    batched = explainer.explain(images, classes)
    assert batched.maps.shape[:2] == (3, 2) and torch.isfinite(batched.maps).all()
    singles = torch.cat([explainer.explain(images[i : i + 1], classes[i : i + 1]).maps for i in range(3)])
    torch.testing.assert_close(batched.maps, singles, rtol=1e-4, atol=1e-6)
    assert count_hooks(vit.model) == 0 and all(p.grad is None for p in vit.model.parameters())


@pytest.mark.parametrize("name", ["attention_rollout", "transformer_attribution"])
def test_hooks_removed_when_the_forward_raises(vit, images, name):
    explainer = build_explainer(name, vit)
    with pytest.raises(AssertionError, match="Wrong image height"):
        explainer(images[:, :, :24, :24], TopK(1))  # torchvision's ViT refuses another input size
    assert count_hooks(vit.model) == 0


# --- loaders --------------------------------------------------------------------------------------------


def test_torchvision_transformers_name_their_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(
        WeightsNotFoundError, match=r"vit_b_16 weights not found: expected .*vit_b_16-c867db91\.pth"
    ):
        load_model("vit_b_16")
    with pytest.raises(WeightsNotFoundError, match=r"swin_t-704ceda3\.pth .*model.weights=PATH"):
        load_model("swin_t")


def test_deit_reads_the_authors_layout(tmp_path, images):
    """A state dict in DeiT/timm key names (written here from torchvision's, by an independent mapping)
    loads into the builder and reproduces the model."""
    source = toy_vit(seed=7)
    renamed = {}
    for key, value in source.model.state_dict().items():
        key = key.replace("class_token", "cls_token").replace("encoder.pos_embedding", "pos_embed")
        key = (
            key.replace("conv_proj.", "patch_embed.proj.")
            .replace("encoder.ln.", "norm.")
            .replace("heads.head.", "head.")
        )
        key = (
            key.replace("encoder.layers.encoder_layer_", "blocks.")
            .replace(".ln_1.", ".norm1.")
            .replace(".ln_2.", ".norm2.")
        )
        key = key.replace(".self_attention.in_proj_", ".attn.qkv.").replace(
            ".self_attention.out_proj.", ".attn.proj."
        )
        key = key.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        renamed[key] = value
    assert "blocks.1.attn.qkv.weight" in renamed
    torch.save({"model": renamed}, tmp_path / "deit.pth")
    loaded = deit(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
        weights=str(tmp_path / "deit.pth"),
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images), source.model(images))
    with pytest.raises(FileNotFoundError, match=r"DeiT weights not found: expected .*nope\.pth"):
        deit(weights=str(tmp_path / "nope.pth"))


def test_pytorch_grad_cam_gets_the_bundles_token_layout(vit, images):
    pytest.importorskip("pytorch_grad_cam")
    classes = torch.tensor([0, 1, 2])
    theirs = build_explainer("pgc/GradCAM", vit)(images, classes)  # input resolution, per-image min-max
    ours = F.interpolate(
        build_explainer("gradcam", vit)(images, classes)[:, None], size=(32, 32), mode="bilinear"
    )
    for i in range(3):
        assert torch.corrcoef(torch.stack([ours[i, 0].flatten(), theirs[i].flatten()]))[0, 1] >= 0.99
    assert count_hooks(vit.model) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["attention_rollout", "transformer_attribution", "gradcam"])
def test_transformer_methods_on_cuda_match_the_cpu(images, name):
    import dataclasses

    cpu = toy_vit()
    gpu = dataclasses.replace(cpu, model=toy_vit().model.cuda())
    classes = torch.tensor([1, 2, 3])
    reference = build_explainer(name, cpu)(images, classes)
    on_gpu = build_explainer(name, gpu)(images.cuda(), classes.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), reference, rtol=1e-3, atol=1e-5)
    assert count_hooks(gpu.model) == 0
