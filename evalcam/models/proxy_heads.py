"""ImageNet classifiers re-read as PASCAL VOC / COCO classifiers, for the pointing game without fine-tuning.

The pointing-game papers (EBP, TorchRay) explain networks fine-tuned on VOC07 / COCO. Where only
ImageNet weights exist, a VOC or COCO class can still be scored by the ImageNet classes it contains:
here a class's logit is the *mean* of the logits of its ImageNet synsets (``dog`` = the 118 dog breeds,
``car`` = sports car, cab, jeep, ...). A mean of logits is linear in the final layer, so the composed
head is again one ``nn.Linear`` after GAP: CAM, Ablation-CAM's analytic mode and every gradient method
apply unchanged.

``person`` is read from ImageNet's only person synsets (ballplayer, groom, scuba diver), a weak proxy.
Classes without any ImageNet counterpart (19 COCO classes, e.g. giraffe, fork) get an all-zero row:
their score is constant, class-specific maps are flat and the pointing game counts them as misses
(``degenerate_maps``), while class-agnostic baselines (center) are unaffected. Reports must say so.

Use with any ImageNet model that has a GAP+FC head: ``model.head=proxy`` takes the dataset's label space
(``python -m evalcam run dataset=voc2007 metrics=[pointing] model.head=proxy``); or through ``model=custom``::

    model=custom model.params._target_=evalcam.models.proxy_heads.proxy_model \
        +model.params.base=efficientnet_lite0 +model.params.label_space=voc model.target_layer=head_act
"""

from __future__ import annotations

import torch
from torch import nn

from evalcam.models import ModelBundle, load_model

_DOGS = list(range(151, 269))
_CATS = list(range(281, 286))
_BIRDS = [*range(7, 25), *range(80, 101), *range(127, 147)]
_BEARS = [294, 295, 296, 297]
_BOATS = [472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914]
_CARS = [407, 436, 468, 511, 609, 627, 656, 661, 717, 734, 751, 817]
_BUSES = [654, 779, 874]
_TRAINS = [466, 547, 565, 705, 820, 829]
_TRUCKS = [555, 569, 675, 717, 864, 867]
_BOTTLES = [440, 720, 737, 898, 901, 907]
_CHAIRS = [423, 559, 765, 857]
_PLANES = [404, 895]
_BIKES = [444, 671]
_MOTORBIKES = [665, 670]
_SCREENS = [664, 782, 851]
_BALLS = [429, 430, 522, 574, 722, 768, 805, 852, 890]
# ImageNet-1k has no "person" class; its only person synsets are ballplayer, groom and scuba diver.
_PEOPLE = [981, 982, 983]

# ImageNet-1k indices per class, in the datasets' class order (evalcam.data.voc / COCO's category order).
LABEL_SPACES: dict[str, dict[str, list[int]]] = {
    "voc": {
        "aeroplane": _PLANES,
        "bicycle": _BIKES,
        "bird": _BIRDS,
        "boat": _BOATS,
        "bottle": _BOTTLES,
        "bus": _BUSES,
        "car": _CARS,
        "cat": _CATS,
        "chair": _CHAIRS,
        "cow": [345],
        "diningtable": [532],
        "dog": _DOGS,
        "horse": [339],
        "motorbike": _MOTORBIKES,
        "person": _PEOPLE,
        "pottedplant": [738],
        "sheep": [348],
        "sofa": [831],
        "train": _TRAINS,
        "tvmonitor": _SCREENS,
    },
    "coco": {
        "person": _PEOPLE,
        "bicycle": _BIKES,
        "car": _CARS,
        "motorcycle": _MOTORBIKES,
        "airplane": _PLANES,
        "bus": _BUSES,
        "train": _TRAINS,
        "truck": _TRUCKS,
        "boat": _BOATS,
        "traffic light": [920],
        "fire hydrant": [],
        "stop sign": [919],
        "parking meter": [704],
        "bench": [703],
        "bird": _BIRDS,
        "cat": _CATS,
        "dog": _DOGS,
        "horse": [339],
        "sheep": [348],
        "cow": [345],
        "elephant": [101, 385, 386],
        "bear": _BEARS,
        "zebra": [340],
        "giraffe": [],
        "backpack": [414],
        "umbrella": [879],
        "handbag": [748],
        "tie": [457, 906],
        "suitcase": [],
        "frisbee": [],
        "skis": [795],
        "snowboard": [],
        "sports ball": _BALLS,
        "kite": [],  # ImageNet's "kite" (21) is the bird of prey
        "baseball bat": [],
        "baseball glove": [],
        "skateboard": [],
        "surfboard": [],
        "tennis racket": [752],
        "bottle": _BOTTLES,
        "wine glass": [],
        "cup": [504, 968],
        "fork": [],
        "knife": [499],
        "spoon": [910],
        "bowl": [659, 809],
        "banana": [954],
        "apple": [948],
        "sandwich": [933],
        "orange": [950],
        "broccoli": [937],
        "carrot": [],
        "hot dog": [934],
        "pizza": [963],
        "donut": [],
        "cake": [],
        "chair": _CHAIRS,
        "couch": [831],
        "potted plant": [738],
        "bed": [564],
        "dining table": [532],
        "toilet": [861],
        "tv": _SCREENS,
        "laptop": [620, 681],
        "mouse": [673],
        "remote": [761],
        "keyboard": [508],
        "cell phone": [487],
        "microwave": [651],
        "oven": [],
        "toaster": [859],
        "sink": [896],
        "refrigerator": [760],
        "book": [921],
        "clock": [409, 530, 892],
        "vase": [883],
        "scissors": [],
        "teddy bear": [850],
        "hair drier": [589],
        "toothbrush": [],
    },
}


def unmapped_classes(label_space: str) -> list[str]:
    """Classes of ``label_space`` that no ImageNet synset stands for (flat maps, see module doc)."""
    return [name for name, ids in LABEL_SPACES[label_space].items() if not ids]


def proxy_matrix(label_space: str, num_imagenet: int = 1000) -> torch.Tensor:
    """``[K, 1000]`` averaging matrix: row k averages the logits of class k's ImageNet synsets."""
    if label_space not in LABEL_SPACES:
        raise ValueError(f"unknown label space {label_space!r}; available: {', '.join(LABEL_SPACES)}")
    rows = []
    for ids in LABEL_SPACES[label_space].values():
        row = torch.zeros(num_imagenet)
        if ids:
            row[ids] = 1.0 / len(ids)
        rows.append(row)
    return torch.stack(rows)


def proxy_model(base: str = "efficientnet_lite0", label_space: str = "voc") -> ModelBundle:
    """``base`` (an ImageNet model with a GAP+FC head) whose classifier now scores ``label_space``."""
    return to_proxy(load_model(base), label_space)


def to_proxy(bundle: ModelBundle, label_space: str) -> ModelBundle:
    """``bundle`` (ImageNet classes, GAP+FC head) with its classifier replaced by a ``label_space`` proxy."""
    base = bundle.name
    if not bundle.classifier:
        raise ValueError(f"proxy heads need a GAP+FC model; {base} names no classifier")
    fc = bundle.model.get_submodule(bundle.classifier)
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"{base}.{bundle.classifier} is {type(fc).__name__}, expected nn.Linear")
    mix = proxy_matrix(label_space, fc.out_features).to(fc.weight)
    head = nn.Linear(fc.in_features, mix.shape[0]).to(fc.weight)
    with torch.no_grad():
        head.weight.copy_(mix @ fc.weight)
        head.bias.copy_(mix @ fc.bias)
    parent_name, _, attr = bundle.classifier.rpartition(".")
    setattr(bundle.model.get_submodule(parent_name) if parent_name else bundle.model, attr, head)
    bundle.name = f"{base}+{label_space}_proxy"
    bundle.categories = list(LABEL_SPACES[label_space])
    bundle.weights = f"{bundle.weights} (ImageNet head averaged into {label_space} classes)"
    return bundle


def apply_head(head: str | None, bundle: ModelBundle, label_space: str) -> ModelBundle:
    """``model.head=``: null keeps the model's own classifier; ``proxy`` re-reads an ImageNet head in the
    dataset's label space (``voc`` or ``coco``) as :func:`to_proxy` describes."""
    if head in (None, "", "own"):
        return bundle
    if head != "proxy":
        raise ValueError(f"model.head={head} is not a head; use model.head=proxy or leave model.head unset")
    if label_space not in LABEL_SPACES:
        raise ValueError(
            f"model.head=proxy maps ImageNet classes onto VOC or COCO classes, but this dataset already "
            f"uses {label_space} classes; drop model.head=proxy"
        )
    if len(bundle.categories) != 1000:
        raise ValueError(
            f"model.head=proxy needs a model with an ImageNet-1k head; {bundle.name} has "
            f"{len(bundle.categories)} outputs, drop model.head=proxy"
        )
    return to_proxy(bundle, label_space)
