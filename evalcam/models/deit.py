"""A DeiT-style vision transformer for ``model=custom``, built on torchvision's ``VisionTransformer``.

DeiT (Touvron et al., ICML 2021) keeps ViT's architecture and changes the training; DeiT-S is ViT with
depth 12, 6 heads, width 384, MLP 1536, 16 px patches at 224 px (the model of LATEC's transformer track).
:func:`deit` builds it (or any smaller variant, for tests) with ``nn.MultiheadAttention`` blocks, so the
attention methods run on it, and returns a bundle with the ViT target layer and token layout::

    python -m evalcam run model=custom model.params._target_=evalcam.models.deit.deit \\
        +model.params.weights=/path/deit_small_patch16_224-cd65a155.pth method=transformer_attribution

``weights``: ``None`` (random initialisation from ``seed``, with a warning) or a local state dict, either
in torchvision's layout or in the DeiT authors' / timm layout (``blocks.0.attn.qkv.weight``, the
``{"model": ...}`` wrapper of the official checkpoints), converted key by key. The distilled DeiT
(a second, distillation token) is not covered: torchvision's ViT has one class token.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.models.bundle import ModelBundle, Preprocess

# timm / DeiT key -> torchvision VisionTransformer key (``{i}``: block index).
_RENAMES = [
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.encoder_layer_\1.ln_1."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.encoder_layer_\1.self_attention.out_proj."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.encoder_layer_\1.ln_2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layers.encoder_layer_\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layers.encoder_layer_\1.mlp.3."),
    (r"^norm\.", "encoder.ln."),
    (r"^head\.", "heads.head."),
]


def from_timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a DeiT/timm ViT state dict to torchvision's ``VisionTransformer`` keys (others unchanged)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"DeiT weights not found: expected {path}; evalcam never downloads weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if any(k.startswith("blocks.") for k in state):
        state = from_timm_layout(state)
    return state


def deit(
    image_size: int = 224,
    patch_size: int = 16,
    num_layers: int = 12,
    num_heads: int = 6,
    hidden_dim: int = 384,
    mlp_dim: int = 1536,
    num_classes: int = 1000,
    weights: str | None = None,
    seed: int = 0,
) -> ModelBundle:
    """DeiT-S by default (see module doc); smaller settings build toy transformers for tests."""
    from torchvision.models.vision_transformer import VisionTransformer

    from evalcam.models.torchvision_models import _check_fits, unzero_vit_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            num_classes=num_classes,
        )
        unzero_vit_head(model)
    if weights is None or str(weights) == "random":
        warnings.warn("deit: no weights given, the model is randomly initialised", stacklevel=2)
        source = f"random (seed {seed})"
    else:
        path = Path(str(weights)).expanduser()
        state = _load_state(path)
        _check_fits(model, state, f"{path} does not fit this DeiT (depth {num_layers}, width {hidden_dim})")
        model.load_state_dict(state)
        source = str(path)
    categories = imagenet_categories() if num_classes == 1000 else [str(i) for i in range(num_classes)]
    return ModelBundle(
        model=model.eval(),
        name=f"deit_d{num_layers}_w{hidden_dim}" if (num_layers, hidden_dim) != (12, 384) else "deit_s",
        target_layer=f"encoder.layers.encoder_layer_{num_layers - 1}.ln_1",
        preprocess=Preprocess(size=(image_size, image_size)),
        categories=categories,
        weights=source,
        reshape="vit",
    )
