"""What each metric needs from the dataset and the model, checked before a run does any work.

A metric declares :class:`Needs` as the class attribute ``needs``; :func:`check_requirements` compares it
with the dataset (boxes, masks, label space) and the model (its label space) and stops a set-up that
cannot be measured with one line that says the fix. Two mistakes this catches used to give plausible
wrong numbers:

- VOC or COCO labels scored on an ImageNet head: the pointing game then explains ImageNet class 11 for
  VOC class 11 (dog). The fix is a model trained on those labels, or ``model.head=proxy``
  (:mod:`evalcam.models.proxy_heads`: each VOC/COCO class scored by the mean logit of its ImageNet synsets);
- a box metric on a dataset without boxes (ILSVRC val read from its image list, without
  ``dataset.annotations=``): every image was a localization miss (``top1_loc_error 1.0``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: label spaces a model's class list may be recognised as (by name, or ImageNet by its 1000 outputs)
KNOWN_SPACES = ("imagenet", "voc", "coco")


@dataclass(frozen=True)
class Needs:
    """What a metric reads besides the maps of the predicted classes."""

    #: the ground-truth classes must index the model's outputs (it explains or checks them)
    labels: bool = False
    #: bounding boxes of the ground-truth classes
    boxes: bool = False
    #: segmentation masks
    masks: bool = False
    #: a region per ground-truth class: its mask where the dataset has one, else the union of its boxes
    regions: bool = False
    #: how an image with several ground-truth classes counts
    multi_label: str = "n/a (predicted class only)"


def metric_needs(metric: Any) -> Needs:
    """The metric's declared :class:`Needs` (an instance may narrow its class's, e.g. masks unless boxes
    stand in for them), with the labels that explaining ground-truth classes implies."""
    needs = getattr(metric, "needs", None) or Needs()
    if getattr(metric, "needs_gt_maps", False) and not needs.labels:
        # Explaining a ground-truth class is only meaningful when it indexes the model's outputs.
        needs = Needs(True, needs.boxes, needs.masks, needs.regions, needs.multi_label)
    return needs


def _normalized(names: Sequence[str]) -> list[str]:
    return [str(n).strip().lower() for n in names]


def model_label_space(categories: Sequence[str]) -> str | None:
    """``imagenet``, ``voc``, ``coco`` or None (unknown) for a model's class names."""
    from evalcam.data.imagenet_classes import imagenet_categories
    from evalcam.data.voc import VOC_CLASSES
    from evalcam.models.proxy_heads import LABEL_SPACES

    names = _normalized(categories)
    if names == _normalized(VOC_CLASSES):
        return "voc"
    if names == _normalized(LABEL_SPACES["coco"]):
        return "coco"
    # torchvision spells some ImageNet names differently from evalcam's list; 1000 outputs is ImageNet-1k.
    if names == _normalized(imagenet_categories()) or len(names) == 1000:
        return "imagenet"
    return None


def proxy_command(base: Sequence[str]) -> str:
    """The user's command with ``model.head=proxy`` added (``base``: the overrides as typed)."""
    kept = [a for a in base if not a.startswith(("model.head=", "+model.head="))]
    return "python -m evalcam run " + " ".join(shlex.quote(a) for a in [*kept, "model.head=proxy"])


def typed_overrides(config: dict[str, Any]) -> list[str]:
    """The overrides of the command that started this run (Hydra's record of them), else the selections
    that rebuild it from ``config``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except ImportError:
        pass
    groups = ("method", "model", "dataset")
    picked = [f"{group}={config[group]['name']}" for group in groups if group in config]
    root = (config.get("dataset") or {}).get("root")
    if root:
        picked.append(f"dataset.root={root}")
    if config.get("metrics"):
        picked.append(f"metrics=[{','.join(config['metrics'])}]")
    return picked


def check_requirements(metrics: Sequence[Any], dataset: Any, bundle: Any, overrides: Sequence[str]) -> None:
    """Stop, with one line naming the fix, when a metric cannot be measured on ``dataset`` with ``bundle``.

    ``overrides``: the command-line overrides of this run, so the proxy-head hint is a command to paste.
    """
    needs = {m.name: metric_needs(m) for m in metrics}
    if not getattr(dataset, "has_masks", False):
        needing = [name for name, n in needs.items() if n.masks]
        if needing:
            raise ValueError(
                f"metric(s) {', '.join(needing)} need segmentation masks, but dataset {dataset.name} has "
                f"boxes only; use a dataset with masks (coco2014, coco2017), set "
                f"metrics.<name>.boxes_as_masks=true where the metric allows boxes, or drop these metrics"
            )
    if not getattr(dataset, "has_boxes", True):
        needing = [name for name, n in needs.items() if n.boxes or n.regions]
        if needing:
            hint = getattr(dataset, "boxes_hint", "") or "use a dataset with boxes or drop these metrics"
            raise ValueError(
                f"metric(s) {', '.join(needing)} need bounding boxes, but dataset {dataset.name} has none "
                f"(every image would count as a miss); {hint}"
            )
    class_specific = [name for name, n in needs.items() if n.labels]
    if not class_specific or not bundle.categories:
        return
    data_space = getattr(dataset, "label_space", None)
    space = model_label_space(bundle.categories)
    what = ", ".join(class_specific)
    if space is not None and data_space in KNOWN_SPACES:
        if space == data_space:
            return
        if space == "imagenet" and data_space in ("voc", "coco"):
            fix = (
                f"for ImageNet weights add model.head=proxy, which scores each {data_space.upper()} class by "
                f"the mean logit of its ImageNet synsets (evalcam/models/proxy_heads.py): "
                f"{proxy_command(overrides)}"
                if getattr(bundle, "classifier", None)
                else f"{bundle.name} has no GAP+FC classifier for model.head=proxy; pass weights trained on "
                f"{data_space.upper()} (model.weights=PATH)"
            )
        else:
            fix = f"use a model trained on {data_space} labels"
        raise ValueError(
            f"metric(s) {what} score the {data_space} classes of {dataset.name}, but model {bundle.name} "
            f"predicts {space} classes, so class k would be read as the model's class k; {fix}"
        )
    classes, outputs = len(dataset.class_names), len(bundle.categories)
    if classes != outputs:
        raise ValueError(
            f"metric(s) {what} score the {classes} classes of {dataset.name}, but model {bundle.name} has "
            f"{outputs} outputs; use a model trained on its labels (model.weights=PATH, "
            f"+model.params.num_classes={classes})"
        )


def needs_table(metrics: dict[str, type]) -> str:
    """The README's "which metric needs what" table, from the metrics' declared :class:`Needs`."""

    def mark(flag: bool) -> str:
        return "yes" if flag else ""

    lines = [
        "| metric | labels in the model's space | boxes | masks | multi-label images |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, cls in metrics.items():
        n = metric_needs(cls)
        boxes = "yes" if n.boxes else ("boxes or masks" if n.regions else "")
        lines.append(f"| `{name}` | {mark(n.labels)} | {boxes} | {mark(n.masks)} | {n.multi_label} |")
    return "\n".join(lines)
