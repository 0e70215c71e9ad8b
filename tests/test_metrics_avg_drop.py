"""Grad-CAM++ Average Drop / Increase in Confidence (Chattopadhay et al. 2018) by hand on a linear model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LinearToy, assert_merged_halves_equal_one_accumulator, make_batch, toy_bundle

from evalcam.metrics.avg_drop import AverageDrop, masked_inputs


def _batch(bundle, inputs, classes, maps):
    return make_batch(bundle, inputs, classes, maps, id_prefix="")


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_average_drop_and_increase_in_confidence_by_hand():
    weights = torch.zeros(2, 3, 2, 2)
    weights[0, 0] = 1.0  # logit0 = sum(channel 0) - 0.25 sum(channel 1); logit1 = 0
    weights[0, 1] = -0.25
    bundle = toy_bundle(LinearToy(weights), (2, 2))
    x = torch.zeros(2, 3, 2, 2)
    x[0, 0] = 0.5  # Y = s(2); keeping one pixel: O = s(0.5) -> drop
    x[1, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    x[1, 1] = torch.tensor(
        [[0.0, 1.0], [1.0, 1.0]]
    )  # Y = s(0.25); the map removes the negative evidence: O = s(1)
    cam = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    metric = AverageDrop()
    records = metric.update(_batch(bundle, x, [0, 0], torch.stack([cam, cam])))
    out = metric.compute()
    drop_a = (sigmoid(2) - sigmoid(0.5)) / sigmoid(2)
    assert records[0]["avg_drop.y"] == pytest.approx(sigmoid(2))
    assert records[0]["avg_drop.o"] == pytest.approx(sigmoid(0.5))
    assert records[1]["avg_drop.o"] == pytest.approx(sigmoid(1))
    assert out["avg_drop"] == pytest.approx((drop_a + 0.0) / 2)  # a fraction, like every metric
    assert out["increase_conf"] == pytest.approx(0.5)


def test_explanation_map_is_taken_in_pixel_space():
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    inputs = torch.ones(1, 3, 2, 2)  # pixel value 0.75
    cam = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # min-max -> [[1, 0], [0.5, 0]]
    pixel, _ = masked_inputs(inputs, cam, mean, std, "pixel")
    assert pixel[0, 0].tolist() == [[1.0, -2.0], [-0.5, -2.0]]  # (0.75 * L - 0.5) / 0.25; black = -2
    normalized, _ = masked_inputs(inputs, cam, mean, std, "normalized")
    assert normalized[0, 0].tolist() == [[1.0, 0.0], [0.5, 0.0]]
    _, degenerate = masked_inputs(inputs, torch.full((1, 2, 2), float("nan")), mean, std)
    assert degenerate.tolist() == [True]


@pytest.mark.parametrize("make", [AverageDrop])
def test_merged_halves_equal_one_accumulator(make):
    assert_merged_halves_equal_one_accumulator(make)
