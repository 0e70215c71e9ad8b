"""The on-disk cache of map-independent perturbation results (evalcam.metrics.score_cache): the methods of a
sweep share occlusion faithfulness's, infidelity's and faithfulness correlation's forwards, give the numbers
an uncached metric gives, and never read a result whose model, image, class, seed or settings changed."""

from __future__ import annotations

import pytest
import torch
from conftest import ConvToy, make_batch, toy_bundle

from evalcam.metrics import faithfulness, faithfulness_correlation, infidelity
from evalcam.metrics.faithfulness import OcclusionFaithfulness
from evalcam.metrics.faithfulness_correlation import FaithfulnessCorrelation
from evalcam.metrics.infidelity import Infidelity
from evalcam.metrics.score_cache import ScoreCache

# metric -> (module whose perturbed forwards are counted, the function they go through, its image argument)
CASES = {
    "faithfulness": (faithfulness, "occlusion_map", 1),
    "infidelity": (infidelity, "occluded_outputs", 1),
    "faithfulness_correlation": (faithfulness_correlation, "masked_scores", 1),
}


def _metric(name: str, cache_dir, **overrides):
    if name == "faithfulness":
        return OcclusionFaithfulness(cache_dir=cache_dir, **{"patch_size": 4, "stride": 3, **overrides})
    if name == "infidelity":
        return Infidelity(cache_dir=cache_dir, **{"patch_size": 4, "stride": 3, **overrides})
    params = {"runs": 6, "subset_size": 9, "seed": 3, "chunk_size": 5, **overrides}
    return FaithfulnessCorrelation(cache_dir=cache_dir, **params)


def _counting(monkeypatch, name: str) -> list[int]:
    """Images handed to the metric's perturbed-forward function, call by call."""
    module, function, arg = CASES[name]
    real, calls = getattr(module, function), []

    def counted(*args, **kwargs):
        calls.append(int(args[arg].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, counted)
    return calls


@pytest.fixture
def setting():
    model = ConvToy().eval()
    bundle = toy_bundle(model, (10, 10))
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(7))
    maps = [torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(s)) for s in (8, 9)]
    return model, bundle, x, maps


def _scores(name, bundle, inputs, maps, cache_dir, **overrides) -> list[float]:
    metric = _metric(name, cache_dir, **overrides)
    records = metric.update(make_batch(bundle, inputs, [1, 4, 2], maps, id_prefix="im"))
    value = {"faithfulness": "spearman", "infidelity": "infidelity"}.get(name, "pearson")
    return [r[f"{name}.{value}"] for r in records]


@pytest.mark.parametrize("name", list(CASES))
def test_methods_share_the_perturbed_forwards_and_get_the_uncached_numbers(
    name, setting, tmp_path, monkeypatch
):
    _model, bundle, x, (maps_a, maps_b) = setting
    calls = _counting(monkeypatch, name)
    plain_a = _scores(name, bundle, x, maps_a, None)
    plain_b = _scores(name, bundle, x, maps_b, None)
    assert calls == [3, 3]
    assert plain_a != pytest.approx(plain_b)  # the maps matter: a cached map would show
    cached_a = _scores(name, bundle, x, maps_a, tmp_path)  # first method: computes and stores
    cached_b = _scores(name, bundle, x, maps_b, tmp_path)  # second method: reads every image
    assert calls == [3, 3, 3]
    assert cached_a == pytest.approx(plain_a, abs=1e-12)
    assert cached_b == pytest.approx(plain_b, abs=1e-12)
    assert len(list(tmp_path.rglob("*.pt"))) == 3


@pytest.mark.parametrize("name", list(CASES))
def test_a_changed_image_class_or_setting_is_recomputed(name, setting, tmp_path, monkeypatch):
    _model, bundle, x, (maps_a, _maps_b) = setting
    calls = _counting(monkeypatch, name)
    _scores(name, bundle, x, maps_a, tmp_path)
    x2 = x.clone()
    x2[1, :, 0, 0] += 1.0
    _scores(name, bundle, x2, maps_a, tmp_path)
    assert calls == [3, 1]  # only the changed image
    changed = {"faithfulness": {"stride": 2}, "infidelity": {"stride": 2}}.get(name, {"seed": 4})
    _scores(name, bundle, x, maps_a, tmp_path, **changed)
    assert calls == [3, 1, 3]
    batch = make_batch(bundle, x, [1, 0, 2], maps_a, id_prefix="im")  # image 1 explained for another class
    _metric(name, tmp_path).update(batch)
    assert calls == [3, 1, 3, 1]


@pytest.mark.parametrize("name", list(CASES))
def test_weights_changed_in_place_and_torn_files_are_not_trusted(name, setting, tmp_path, monkeypatch):
    model, bundle, x, (maps_a, _maps_b) = setting
    calls = _counting(monkeypatch, name)
    metric = _metric(name, tmp_path)
    batch = make_batch(bundle, x, [1, 4, 2], maps_a, id_prefix="im")
    metric.update(batch)
    metric.update(batch)
    assert calls == [3]
    # The same metric (and cache object) after an in-place change of the weights: hashed again, recomputed.
    with torch.no_grad():
        model.fc.bias += 1.0
    metric.update(make_batch(bundle, x, [1, 4, 2], maps_a, id_prefix="im"))
    assert calls == [3, 3]
    for path in tmp_path.rglob("*.pt"):
        path.write_bytes(b"junk")
    metric.update(batch)
    assert calls == [3, 3, 3]


def test_fingerprint_follows_the_values_not_the_object():
    model = ConvToy().eval()
    cache = ScoreCache("/nonexistent", "x")
    first = cache.fingerprint(model)
    assert cache.fingerprint(model) == first
    twin = ConvToy().eval()  # same seed, same values
    assert cache.fingerprint(twin) == first
    with torch.no_grad():
        twin.conv.weight[0, 0, 0, 0] += 1e-6
    assert cache.fingerprint(twin) != first
    assert cache.fingerprint(model.train()) != first  # a model in training mode is another function
    model.eval()
    assert cache.fingerprint(model) == first
    model.act = torch.nn.ReLU6()  # same values, another function
    assert cache.fingerprint(model) != first


def test_bench_counts_one_set_of_forwards_for_all_methods_and_one_per_method_for_quantus():
    pytest.importorskip("quantus")
    from evalcam.bench.faithfulness_metrics import bench_shared_rows

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # `incremental: auto` re-infers incrementally on one or two threads
    try:
        rows = bench_shared_rows(images=1, steps=24, methods=2)
    finally:
        torch.set_num_threads(threads)
    correlation, infidelity = rows
    assert correlation["metric"] == "faithfulness_correlation x2 methods"
    assert correlation["evalcam_forwards"] == 24  # the first method's 24 runs; the second reads them
    assert correlation["quantus_forwards"] >= 2 * 24  # every method pays its runs
    assert correlation["ratio"] == correlation["quantus_s"] / correlation["evalcam_s"]
    # infidelity's squares run incrementally: its forwards are the first method's one clean pass
    assert infidelity["evalcam_forwards"] == 1
    assert infidelity["quantus_forwards"] >= 2 * 16
