"""The batch step (evalcam.pipeline): one explanation per batch feeds every metric; the run context
explains as many classes as the most demanding metric asks for."""

from __future__ import annotations

import pytest
import torch

from evalcam.data import Sample, build_dataset
from evalcam.methods import build_explainer
from evalcam.metrics import build_metrics
from evalcam.pipeline import RunContext, evaluate_batch, explain_batch

METRICS = {"weak_loc": {}, "pointing": {}}


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    dataset = build_dataset("sample", limit=3)
    return [dataset[i] for i in range(len(dataset))]


class Keeper:
    def __init__(self) -> None:
        self.batches = []

    def add(self, batch) -> None:
        self.batches.append(batch)


def test_context_explains_what_the_metrics_need(lite0):
    explainer = build_explainer("gradcam", lite0)
    cpu = torch.device("cpu")
    only_loc = RunContext.build(lite0, explainer, build_metrics({"weak_loc": {"topk": 3}}, cpu), cpu, topk=1)
    assert (only_loc.topk, only_loc.need_gt) == (3, False)
    both = RunContext.build(lite0, explainer, build_metrics(METRICS, cpu), cpu, topk=7)
    assert (both.topk, both.need_gt) == (7, True)  # pointing reads the ground-truth classes' maps


def test_evaluate_batch_equals_explaining_once_and_updating_each_metric(lite0, samples):
    cpu = torch.device("cpu")
    explainer = build_explainer("gradcam", lite0)
    keeper = Keeper()
    context = RunContext.build(lite0, explainer, build_metrics(METRICS, cpu), cpu, topk=5, examples=keeper)
    rows = evaluate_batch(samples, context)

    inputs = lite0.preprocess([s.image for s in samples], cpu)
    batch = explain_batch(samples, inputs, lite0, explainer, topk=5, need_gt=True)
    by_hand = build_metrics(METRICS, cpu)
    records = [metric.update(batch) for metric in by_hand]
    assert [r["image_id"] for r in rows] == [s.image_id for s in samples]
    assert [r["pred_top5"] for r in rows] == batch.logits.topk(5).indices.tolist()
    for i, row in enumerate(rows):
        assert row["status"] == "ok" and row["labels"] == samples[i].labels
        assert (
            sum(row["pred_top5_prob"]) < 1.0 and row["pred_top5_prob"] == sorted(row["pred_top5_prob"])[::-1]
        )
        for per_metric in records:
            for key, value in per_metric[i].items():
                assert row[key] == value, key
    for metric, again in zip(context.metrics, by_hand, strict=True):
        assert metric.compute() == pytest.approx(again.compute(), nan_ok=True)
    assert len(keeper.batches) == 1 and torch.equal(keeper.batches[0].pred_maps, batch.pred_maps)
    states = context.states()
    assert set(states) == {"weak_loc", "pointing"}
    context.reset_metrics()
    assert all(float(t.abs().sum()) == 0 for s in context.states().values() for t in s.values())
    assert any(float(t.abs().sum()) > 0 for s in states.values() for t in s.values())


class Writes:
    """A metric that writes into one of the batch's tensors (as the incremental deletion chains once did)."""

    name = "writes"
    pred_topk = 1
    needs_gt_maps = False

    def __init__(self, target: str) -> None:
        self.target = target

    def update(self, batch):
        tensor = getattr(batch, self.target)
        tensor.view(-1)[0] += 1
        return [{} for _ in batch.samples]

    def reset(self) -> None:
        pass


@pytest.mark.parametrize("target", ["inputs", "pred_maps"])
def test_a_metric_that_changes_the_batch_stops_the_run(lite0, samples, target):
    from evalcam.pipeline import BatchModifiedError

    cpu = torch.device("cpu")
    metrics = [*build_metrics({"weak_loc": {}}, cpu), Writes(target)]
    context = RunContext.build(lite0, build_explainer("gradcam", lite0), metrics, cpu, topk=1)
    with pytest.raises(BatchModifiedError, match=f"'writes' changed the batch's {target} in place"):
        evaluate_batch(samples[:2], context)


def test_nan_maps_are_not_taken_for_a_change(lite0, samples):
    from evalcam.pipeline import BatchGuard

    batch = explain_batch(samples[:2], lite0.preprocess([s.image for s in samples[:2]], "cpu"),
                          lite0, build_explainer("gradcam", lite0), 1, False)  # fmt: skip
    batch.pred_maps[0] = float("nan")  # a degenerate map, before the guard copies it
    guard = BatchGuard(batch)
    guard.check(batch, "reader")  # NaN == NaN here: no error
    batch.pred_maps[1, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="'reader' changed the batch's pred_maps"):
        guard.check(batch, "reader")
