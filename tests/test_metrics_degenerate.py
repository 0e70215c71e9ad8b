"""Degenerate maps (all zeros, constant, NaN, +/-Inf) through every registered metric: each one counts them
in ``degenerate_maps``, documents its rule, and never lets one bad image turn a run's number into NaN."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import ConvToy
from torch import nn

from evalcam.data.types import Sample
from evalcam.methods.base import Explainer, Explanation, TopK, resolve_targets
from evalcam.metrics import METRICS, EvalBatch, build_metrics
from evalcam.models.bundle import ModelBundle, Preprocess
from evalcam.pipeline import explain_batch

SIZE = 16  # image and network input
MAP = 4  # feature-map resolution
CLASSES = 6

# Small settings so that every metric runs in well under a second on this toy model.
PARAMS: dict[str, dict] = {
    "weak_loc": {"topk": 5},
    "pointing": {"num_classes": CLASSES},
    "faithfulness": {"patch_size": 8, "stride": 8},
    "deletion": {"step": 64},
    "insertion": {"step": 64, "blur_size": 3},
    "robustness": {"steps": 2},
    "sanity": {"steps": 2},
    # The harness's samples carry boxes only; its images have 16 x 16 = 256 pixels.
    "relevance_mass": {"boxes_as_masks": True},
    "relevance_rank": {"boxes_as_masks": True},
    "attribution_localisation": {"boxes_as_masks": True},
    "topk_intersection": {"boxes_as_masks": True, "k": 20},
    "mask_auc": {"boxes_as_masks": True},
    "road": {"percentages": [30, 70]},
    "irof": {"n_segments": 100, "compactness": 0.1},
    "pixel_flipping": {"steps": 8},
    "region_perturbation": {"patch_size": 8, "regions": 3},
    "faithfulness_correlation": {"runs": 4, "subset_size": 8},
    "faithfulness_estimate": {"steps": 8},
    "monotonicity_correlation": {"steps": 4, "samples": 2},
    "infidelity": {"patch_size": 8, "stride": 8},
}


def bad_map(kind: str) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros(MAP, MAP)
    if kind == "constant":
        return torch.full((MAP, MAP), 0.7)
    good = good_map()
    good[1, 2] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind]
    return good


def good_map() -> torch.Tensor:
    """A peak over the top-left quadrant, where every sample's object is."""
    ys, xs = torch.meshgrid(torch.arange(MAP), torch.arange(MAP), indexing="ij")
    return torch.exp(-((ys - 0.5) ** 2 + (xs - 0.5) ** 2).float())


class FixedMaps(Explainer):
    """Returns ``maps[i]`` for image ``i`` whatever the input or model (also on adversarial inputs and on
    the randomized copies of the sanity check), so a degenerate map stays degenerate everywhere."""

    name = "fixed"

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        super().__init__(model)
        self.maps = maps

    def explain(self, images: torch.Tensor, targets) -> Explanation:
        with torch.no_grad():
            logits = self.model(images).float()
        classes, fns = resolve_targets(targets, logits)
        # Metrics that explain several copies of each image send them copy-major (copy s of image i at
        # s * B + i), so cycling through the maps gives every copy its image's map.
        rows = torch.arange(images.shape[0]) % self.maps.shape[0]
        maps = self.maps[rows, None].expand(-1, len(fns), MAP, MAP).clone()
        return Explanation(maps=maps, logits=logits, classes=classes)


def make_batch(maps: torch.Tensor) -> EvalBatch:
    model = ConvToy(width=8, classes=CLASSES, stride=4).eval()
    bundle = ModelBundle(
        model=model,
        name="tiny",
        target_layer="act",
        preprocess=Preprocess((SIZE, SIZE), (0.5,) * 3, (0.25,) * 3),
        categories=[str(i) for i in range(CLASSES)],
    )
    n = maps.shape[0]
    inputs = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    explainer = FixedMaps(model, maps)
    pred = explainer.explain(inputs, TopK(5))
    samples = []
    for i in range(n):
        cls = int(pred.classes[i, 0])  # the top-1 class is a ground-truth class: every check applies
        samples.append(
            Sample(
                image=torch.zeros(3, SIZE, SIZE, dtype=torch.uint8),
                image_id=f"img{i}",
                labels=[cls],
                boxes={cls: torch.tensor([[0.0, 0.0, 7.0, 7.0]])},
                difficult={cls: torch.tensor([False])},
                orig_size=(SIZE, SIZE),
            )
        )
    return explain_batch(samples, inputs, bundle, explainer, topk=5, need_gt=True)


def evaluate(name: str, maps: torch.Tensor) -> dict[str, float]:
    (metric,) = build_metrics({name: PARAMS.get(name, {})}, "cpu")
    records = metric.update(make_batch(maps))
    assert len(records) == maps.shape[0]
    return metric.compute()


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_documents_its_degenerate_map_rule(name):
    doc = sys.modules[METRICS[name].__module__].__doc__ or ""
    assert "degenerate" in doc.lower(), (
        f"{METRICS[name].__module__} does not document its degenerate-map rule"
    )


@pytest.mark.parametrize("kind", ["zeros", "constant", "nan", "inf", "-inf"])
@pytest.mark.parametrize("name", sorted(METRICS))
def test_one_degenerate_map_is_counted_and_spoils_no_number(name, kind):
    if name == "focus":
        pytest.skip(
            "Focus builds mosaics from images of other labels, and this harness's two images share one; "
            "see test_metrics_mask_localization.py::test_focus_counts_degenerate_mosaic_maps"
        )
    good = evaluate(name, torch.stack([good_map(), good_map()]))
    mixed = evaluate(name, torch.stack([bad_map(kind), good_map()]))
    assert good["degenerate_maps"] == 0
    assert mixed["degenerate_maps"] >= 1, mixed
    assert set(mixed) == set(good)
    # Whatever a run of good maps can report, a run with one degenerate map reports too.
    spoiled = [k for k, v in good.items() if math.isfinite(v) and not math.isfinite(mixed[k])]
    assert not spoiled, {k: mixed[k] for k in spoiled}
