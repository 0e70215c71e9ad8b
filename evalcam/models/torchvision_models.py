"""torchvision ImageNet classifiers with weights read from local files only (never downloaded).

Weights come from ``torch.hub.get_dir()/checkpoints/<file>``, the file name torchvision itself would
download to (the last part of ``WeightsEnum.url``), or from ``weights=PATH``. ``weights=random`` builds
the architecture with a seeded random initialisation (``torch.manual_seed(0)``: runs and tests repeat)
for layer inspection and tests; it says so in a warning.

Default target layers follow the papers:

- VGG16 ``features.29``: the ReLU after conv5_3, i.e. the rectified last conv feature maps Grad-CAM uses
  (Selvaraju et al., ICCV 2017, §3);
- AlexNet ``features.11``: the ReLU after conv5;
- ResNet18/50 ``layer4``, GoogLeNet ``inception5b``: the last conv block before global average pooling,
  the layer CAM is defined on (Zhou et al., CVPR 2016);
- MobileNet / EfficientNet: the last block of ``features`` (the 1x1 conv + BN + activation before pooling).
- ViT-B/16 ``encoder.layers.encoder_layer_11.ln_1`` and Swin-T ``features.7.1.norm1``: the first LayerNorm
  of the last transformer block, the layer pytorch-grad-cam's ViT and Swin tutorials explain
  (``model.blocks[-1].norm1`` / ``model.layers[-1].blocks[-1].norm1`` in timm). The last block's *output*
  would not do for ViT: the head reads only the class token, so the patch tokens there get no gradient;
  before the last attention they reach the class token. The bundle's ``reshape`` turns ViT's tokens
  ``[B, 1 + 14*14, C]`` into ``[B, C, 14, 14]`` (class token dropped) and Swin's ``[B, 7, 7, C]`` into
  ``[B, C, 7, 7]``; torchvision's Swin merges its shifted windows back into that spatial layout inside
  each attention module, so the block outputs need no window reversal (see :mod:`evalcam.methods.reshape`).

Inputs are squashed to the weights' crop size (224 for most; 240-600 for EfficientNet-B1..B7) and
normalised with the weights' mean/std.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalcam.models.bundle import ModelBundle, Preprocess

log = logging.getLogger(__name__)

EFFICIENTNETS = tuple(f"efficientnet_b{i}" for i in range(8))
MOBILENETS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
TRANSFORMERS = ("vit_b_16", "swin_t")
ARCHITECTURES = (
    "vgg16",
    "resnet18",
    "resnet50",
    "alexnet",
    "googlenet",
    *EFFICIENTNETS,
    *MOBILENETS,
    *TRANSFORMERS,
)

# How the CAM methods read each transformer's token layers (:data:`evalcam.methods.reshape.RESHAPES`).
TOKEN_LAYOUTS = {"vit_b_16": "vit", "swin_t": "nhwc"}

# Names of the linear layer right after global average pooling (+ dropout), for CAM. VGG/AlexNet have
# fully connected layers on flattened maps and MobileNetV3 a two-layer head, so CAM does not apply there.
CLASSIFIERS = {
    "resnet18": "fc",
    "resnet50": "fc",
    "googlenet": "fc",
    "mobilenet_v2": "classifier.1",
    **{name: "classifier.1" for name in EFFICIENTNETS},
}


class WeightsNotFoundError(FileNotFoundError):
    """Local weights are missing; the message names the file and where to put it."""


# Index of the last block of ``features`` (the 1x1 conv + BN + activation before pooling).
LAST_FEATURE_BLOCK = {
    "mobilenet_v2": 18,
    "mobilenet_v3_large": 16,
    "mobilenet_v3_small": 12,
    **{name: 8 for name in EFFICIENTNETS},
}
FIXED_LAYERS = {
    "vgg16": "features.29",
    "alexnet": "features.11",
    "resnet18": "layer4",
    "resnet50": "layer4",
    "googlenet": "inception5b",
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
    "swin_t": "features.7.1.norm1",
}


def default_target_layer(arch: str) -> str:
    """Paper-default CAM layer of ``arch`` (see module doc)."""
    if arch in FIXED_LAYERS:
        return FIXED_LAYERS[arch]
    if arch in LAST_FEATURE_BLOCK:
        return f"features.{LAST_FEATURE_BLOCK[arch]}"
    raise ValueError(f"no default target layer for {arch!r}")


def weights_enum(arch: str, tag: str = "IMAGENET1K_V1"):
    """torchvision's weights entry ``tag`` (e.g. ``IMAGENET1K_V1``, ``DEFAULT``) for ``arch``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    try:
        return enum[tag] if tag != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ValueError(f"{arch} has no weights {tag!r}; available: {', '.join(enum.__members__)}") from None


def hub_checkpoint(arch: str, tag: str = "IMAGENET1K_V1") -> Path:
    """Where torchvision keeps the downloaded file for ``arch``/``tag`` (nothing is downloaded here)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_enum(arch, tag).url.rsplit("/", 1)[-1]


def _is_tag(value: str) -> bool:
    return value == "DEFAULT" or (
        value.isupper() and "/" not in value and not value.endswith((".pth", ".pt"))
    )


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """One-line ValueError naming missing, unexpected and mis-shaped keys (load_state_dict's message is a
    page long)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = [
        f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes))
        if keys
    ]
    if problems:
        raise ValueError(f"{what}: keys {'; '.join(problems)}")


def _architecture(arch: str, num_classes: int, transform_input: bool, image_size: int = 224) -> nn.Module:
    from torchvision.models import get_model

    if arch == "vit_b_16":
        # The position embeddings fix ViT's input size (384 for the SWAG_E2E weights).
        return get_model(arch, weights=None, num_classes=num_classes, image_size=image_size)
    if arch == "googlenet":
        # torchvision's ImageNet GoogLeNet was trained on (x - 0.5) / 0.5 inputs; transform_input converts
        # ImageNet-normalised inputs into that. The auxiliary heads are for training only.
        return get_model(
            arch,
            weights=None,
            num_classes=num_classes,
            aux_logits=False,
            transform_input=transform_input,
            init_weights=False,
        )
    return get_model(arch, weights=None, num_classes=num_classes)


def unzero_vit_head(model: nn.Module) -> None:
    """torchvision zero-initialises ViT's classification head, so every gradient of a randomly initialised
    ViT is 0 and every gradient method gives an empty map; draw it like DeiT/timm (normal, std 0.02)."""
    head = model.heads.head  # type: ignore[union-attr]
    nn.init.trunc_normal_(head.weight, std=0.02)


def load_torchvision(
    arch: str,
    weights: str | None = None,
    target_layer: str | None = None,
    num_classes: int = 1000,
    size: int | list[int] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    transform_input: bool = True,
) -> ModelBundle:
    """Build torchvision ``arch`` from local weights.

    ``weights``: ``None`` / a tag such as ``IMAGENET1K_V1`` or ``IMAGENET1K_V2`` (read from the torch hub
    cache), a path to a state dict, or ``random``. ``None`` means ``IMAGENET1K_V1``, the weights the
    Grad-CAM era papers used. ``size``/``mean``/``std`` override the weights' preprocessing.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown torchvision architecture {arch!r}; available: {', '.join(ARCHITECTURES)}")
    spec = str(weights) if weights is not None else "IMAGENET1K_V1"
    tag = spec if _is_tag(spec) else "IMAGENET1K_V1"
    meta = weights_enum(arch, tag)
    transform = meta.transforms()
    crop = size if size is not None else transform.crop_size[0]
    crop_hw = tuple(crop) if isinstance(crop, list | tuple) else (int(crop), int(crop))
    if spec == "random":
        # Seeded, so a run (and a test) on a random architecture is reproducible; the caller's RNG is kept.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _architecture(arch, num_classes, transform_input, crop_hw[0])
        warnings.warn(f"{arch}: weights=random, the model is randomly initialised", stacklevel=2)
        if arch == "vit_b_16":
            unzero_vit_head(model)
        source = "random"
    else:
        path = hub_checkpoint(arch, tag) if _is_tag(spec) else Path(spec).expanduser()
        if not path.is_file():
            how = (
                f"download {meta.url} on a machine with network access and copy it there, "
                f"or pass model.weights=PATH"
                if _is_tag(spec)
                else "check model.weights"
            )
            raise WeightsNotFoundError(
                f"{arch} weights not found: expected {path} ({how}); evalcam never downloads weights"
            )
        state = _state_dict(path)
        if arch == "googlenet":
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        # Built on the meta device and filled from the file: random initialisation of 100M+ parameters
        # (VGG16) would take seconds only to be overwritten.
        with torch.device("meta"):
            model = _architecture(arch, num_classes, transform_input, crop_hw[0])
        _check_fits(model, state, f"{path} does not fit torchvision {arch} (num_classes={num_classes})")
        model.load_state_dict(state, assign=True)
        leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:
            raise ValueError(f"{path} lacks tensors of {arch}: {', '.join(leftover[:5])}")
        source = str(path)
    # torchvision uses ReLU(inplace=True); hooks from other libraries (full backward hooks, guided
    # backprop) reject in-place outputs, and evaluation does not need the memory saving.
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    preprocess = Preprocess(
        size=crop_hw,  # type: ignore[arg-type]
        mean=tuple(mean or transform.mean),
        std=tuple(std or transform.std),
    )  # type: ignore[arg-type]
    categories = (
        list(meta.meta["categories"])
        if num_classes == len(meta.meta["categories"])
        else [str(i) for i in range(num_classes)]
    )
    return ModelBundle(
        model=model.eval(),
        name=arch,
        target_layer=target_layer or default_target_layer(arch),
        preprocess=preprocess,
        categories=categories,
        weights=source,
        classifier=CLASSIFIERS.get(arch),
        reshape=TOKEN_LAYOUTS.get(arch),
    )


def builder(arch: str):
    """Registry entry for ``arch`` (``load_model("resnet50", weights=...)``)."""

    def build(**kw: Any) -> ModelBundle:
        return load_torchvision(arch, **kw)

    build.__doc__ = f"torchvision {arch} from local weights (see evalcam.models.torchvision_models)."
    return build
