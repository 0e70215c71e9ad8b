"""ImageNet-1k class names in torchvision's index order.

Shipped as a text file (``imagenet_categories.txt``, written from torchvision's weights metadata; a test
keeps both equal) because importing torchvision only for the names costs a second or more of every run's
start-up on models that do not otherwise need it.
"""

from functools import cache
from importlib import resources


@cache
def imagenet_categories() -> list[str]:
    text = resources.files("evalcam.data").joinpath("imagenet_categories.txt").read_text()
    return text.splitlines()
