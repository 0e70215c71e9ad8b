"""The reference baselines: ``center`` is scored at TorchRay's centre point, ``random`` is a seeded random
blob (a random box/point), and the two differ under localization and the pointing game; layers are
found by dotted path even when a module instance is shared under several names."""

from __future__ import annotations

import pytest
import torch
from conftest import box_sample
from torch import nn

from evalcam.data import build_dataset
from evalcam.methods import TopK, build_explainer
from evalcam.methods.baselines import CenterBaseline, RandomBaseline
from evalcam.metrics import build_metrics
from evalcam.metrics.pointing import PointingGame
from evalcam.models.layers import resolve_layer
from evalcam.pipeline import explain_batch


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


@pytest.mark.parametrize(
    ("box", "hit"),
    [
        # 375 x 500 image: TorchRay's point is (250, 187.5). A box whose nearest pixel row is 202 lies
        # 14.5 px away (a hit); the argmax of the resampled blob, row 187, would be 15 px away (a miss).
        ([240, 202, 260, 220], True),
        ([240, 203, 260, 220], False),
    ],
)
def test_center_is_scored_at_torchrays_centre_point(box, hit):
    sample = box_sample("c", 0, box, (375, 500))
    explainer = CenterBaseline(Flat())
    batch = explain_batch([sample], torch.zeros(1, 3, 8, 8), _bundle(), explainer, topk=1, need_gt=True)
    metric = PointingGame(num_classes=1)
    records = metric.update(batch)
    assert records[0]["pointing.points"] == [[250.0, 187.5]]
    assert records[0]["pointing.hit"] == [int(hit)]


def _bundle():
    from evalcam.models.bundle import ModelBundle, Preprocess

    return ModelBundle(
        model=Flat(), name="flat", target_layer=None, preprocess=Preprocess((8, 8), (0.5,) * 3, (0.25,) * 3)
    )


def test_random_blobs_are_seeded_per_image_and_by_seed():
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    first = RandomBaseline(Flat(), seed=0).explain(images, TopK(1)).maps
    again = RandomBaseline(Flat(), seed=0).explain(images[[2, 0, 1]], TopK(1)).maps
    other = RandomBaseline(Flat(), seed=1).explain(images, TopK(1)).maps
    assert torch.equal(first[[2, 0, 1]], again)  # a map does not depend on the batch it is in
    assert not torch.allclose(first, other)
    peaks = [divmod(int(m.argmax()), m.shape[-1]) for m in first[:, 0]]
    assert len(set(peaks)) == 3  # the blob sits at a different place for each image
    assert float(first.amin()) < 0.2 * float(first.amax())  # one region, not noise over the whole map


def test_random_rejects_a_bad_sigma_range():
    with pytest.raises(ValueError, match=r"method.params.sigma_range must be \[low, high\]"):
        RandomBaseline(Flat(), sigma_range=(0.3, 0.1))


def test_random_and_center_differ_on_the_sample_set(lite0):
    dataset = build_dataset("sample")
    samples = [dataset[i] for i in range(len(dataset))]
    inputs = lite0.preprocess([s.image for s in samples], lite0.device)
    out = {}
    for name in ("center", "random"):
        metrics = build_metrics({"localization": {}, "pointing": {}}, "cpu")
        batch = explain_batch(samples, inputs, lite0, build_explainer(name, lite0), topk=5, need_gt=True)
        for metric in metrics:
            metric.update(batch)
        out[name] = {f"{m.name}/{k}": v for m in metrics for k, v in m.compute().items()}
    for key in ("weak_loc/top1_loc_error", "weak_loc/top5_loc_error", "pointing/accuracy"):
        assert out["random"][key] != out["center"][key], key
    assert out["random"]["weak_loc/degenerate_maps"] == 0.0


class SharedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        act = nn.ReLU()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), act, nn.Conv2d(4, 4, 3), act)


def test_resolve_layer_follows_the_dotted_path_of_a_shared_module():
    model = SharedReLU()
    assert "features.3" not in dict(model.named_modules())  # hidden by named_modules' de-duplication
    assert resolve_layer(model, "features.3") is model.features[3]
    assert resolve_layer(model, "features.1") is model.features[1]
    with pytest.raises(KeyError, match=r"layer 'features\.9' not found"):
        resolve_layer(model, "features.9")
