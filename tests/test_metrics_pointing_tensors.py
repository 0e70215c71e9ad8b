"""The pointing games' tensor form (evalcam.metrics.pointing_tensors) against the per-class reference
functions they replaced (argmax_point, pointing_hit, energy_in_region), on random maps, boxes and masks."""

from __future__ import annotations

import torch
from conftest import map_batch

from evalcam.data.types import Sample
from evalcam.maps import upsample
from evalcam.metrics.base import EvalBatch
from evalcam.metrics.pointing import EnergyPointingGame, PointingGame, energy_in_region, is_flat
from evalcam.metrics.regions import argmax_point, class_mask, pointing_hit


def _random_samples(seed: int) -> tuple[list[Sample], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    samples, rows = [], []
    for i in range(6):
        size = (int(torch.randint(40, 90, (1,), generator=g)), int(torch.randint(40, 90, (1,), generator=g)))
        classes = torch.randperm(7, generator=g)[: 1 + i % 3].tolist()
        boxes, masks = {}, None
        for c in classes:
            x0, y0 = (int(v) for v in torch.randint(0, 30, (2,), generator=g))
            w, h = (int(v) for v in torch.randint(2, 25, (2,), generator=g))
            boxes[c] = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32)
        if i % 2:  # masks instead of boxes on every other image
            masks = {c: torch.rand(size, generator=g) > 0.97 for c in classes}
        samples.append(
            Sample(
                image=torch.zeros(3, *size, dtype=torch.uint8),
                image_id=str(i),
                labels=sorted(classes),
                boxes=boxes,
                difficult={c: torch.tensor([False]) for c in classes},
                masks=masks,
                orig_size=size,
            )
        )
        rows.append(sorted(classes) + [-1] * (3 - len(classes)))
    gt_classes = torch.tensor(rows)
    maps = torch.randn(6, 3, 7, 7, generator=g)
    maps[0, 0] = 2.0  # a constant map: degenerate
    maps[1, 0] = -1.0  # no positive energy
    return samples, gt_classes, maps


def _batch(samples, gt_classes, maps) -> EvalBatch:
    pred_maps = torch.zeros(len(samples), 1, 7, 7)
    return map_batch(samples, pred_maps=pred_maps, gt_classes=gt_classes, gt_maps=maps, num_classes=7)


def test_pointing_records_equal_the_per_class_reference():
    samples, gt_classes, maps = _random_samples(0)
    records = PointingGame(num_classes=7, tolerance=6).update(_batch(samples, gt_classes, maps))
    hits = 0
    for i, (sample, record) in enumerate(zip(samples, records, strict=True)):
        expected_hits, expected_points = [], []
        for col, cls in enumerate(c for c in gt_classes[i].tolist() if c >= 0):
            cam = upsample(maps[i, col], sample.size)
            if is_flat(maps[i, col]) or is_flat(cam):
                expected_hits.append(0)
                expected_points.append(None)
                continue
            point = argmax_point(cam)
            expected_hits.append(int(pointing_hit(point, sample, cls, 6)))
            expected_points.append(list(point))
        assert record["pointing.hit"] == expected_hits
        assert record["pointing.points"] == expected_points
        hits += sum(expected_hits)
    assert 0 < hits < sum(len(r["pointing.hit"]) for r in records)  # both outcomes occur


def test_energy_records_equal_the_per_class_reference():
    samples, gt_classes, maps = _random_samples(1)
    metric = EnergyPointingGame()
    records = metric.update(_batch(samples, gt_classes, maps))
    for i, (sample, record) in enumerate(zip(samples, records, strict=True)):
        expected = []
        for col, cls in enumerate(c for c in gt_classes[i].tolist() if c >= 0):
            cam = upsample(maps[i, col], sample.size)
            share = None if is_flat(maps[i, col]) else energy_in_region(cam, class_mask(sample, cls))
            expected.append(0.0 if share is None else share)
        assert record["energy_pointing.energy"] == expected
    assert float(metric.compute()["degenerate_maps"]) == 2
