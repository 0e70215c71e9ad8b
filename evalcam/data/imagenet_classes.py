"""ImageNet-1k class names in torchvision's index order (read from torchvision's metadata, no download)."""

from functools import cache


@cache
def imagenet_categories() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
