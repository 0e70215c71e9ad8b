"""Property-based checks of the box, IoU and connected-component code against brute-force pixel references."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evalcam.data.base import clean_objects, rescale_boxes
from evalcam.data.coco import coco_box, inclusive_box
from evalcam.metrics.boxes import box_iou, largest_component_box, largest_component_boxes
from evalcam.metrics.maxboxacc import iou_matrix, segment_boxes

SIDE = 12


def box_pixels(box, height: int = 40, width: int = 40) -> set[tuple[int, int]]:
    """The pixels of an inclusive box, by enumeration."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return {
        (y, x)
        for y in range(max(y0, 0), min(y1, height - 1) + 1)
        for x in range(max(x0, 0), min(x1, width - 1) + 1)
    }


def brute_iou(a, b) -> float:
    pa, pb = box_pixels(a), box_pixels(b)
    return len(pa & pb) / len(pa | pb)


@st.composite
def boxes(draw, low: int = 0, high: int = 39):
    x0, x1 = sorted(draw(st.lists(st.integers(low, high), min_size=2, max_size=2)))
    y0, y1 = sorted(draw(st.lists(st.integers(low, high), min_size=2, max_size=2)))
    return [x0, y0, x1, y1]


@settings(max_examples=200, deadline=None)
@given(boxes(), st.lists(boxes(), min_size=1, max_size=5))
def test_box_iou_counts_pixels(box, others):
    got = box_iou(torch.tensor(box, dtype=torch.float64), torch.tensor(others, dtype=torch.float64))
    want = [brute_iou(box, other) for other in others]
    assert np.allclose(got.numpy(), want, rtol=0, atol=1e-12)
    matrix = iou_matrix(np.array([box]), np.array(others))
    assert np.allclose(matrix[0], want, rtol=0, atol=1e-12)


def brute_components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected segments by flood fill, in order of their first pixel in a row-major scan."""
    seen = np.zeros_like(mask, dtype=bool)
    segments = []
    height, width = mask.shape
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or seen[y, x]:
                continue
            stack, pixels = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            segments.append(pixels)
    return segments


def bounding(pixels: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    ys, xs = zip(*pixels, strict=True)
    return min(xs), min(ys), max(xs), max(ys)


@settings(max_examples=150, deadline=None)
@given(arrays(bool, (SIDE, SIDE)))
def test_largest_component_box_matches_flood_fill(mask):
    segments = brute_components(mask)
    if not segments:
        assert largest_component_box(mask) is None
        return
    biggest = max(len(s) for s in segments)
    first = next(s for s in segments if len(s) == biggest)  # ties: first segment met in raster order
    assert largest_component_box(mask) == bounding(first)


@settings(max_examples=100, deadline=None)
@given(arrays(bool, (4, SIDE, SIDE)))
def test_stacked_planes_are_boxed_each_on_its_own(masks):
    """One labelling pass over a stack (empty planes included) boxes every plane as flood fill does: no
    segment crosses planes, ties still go to the first segment in the plane's raster order."""
    want = []
    for mask in masks:
        segments = brute_components(mask)
        biggest = max((len(s) for s in segments), default=0)
        want.append(bounding(next(s for s in segments if len(s) == biggest)) if segments else None)
    assert largest_component_boxes(masks) == want


@settings(max_examples=150, deadline=None)
@given(arrays(bool, (SIDE, SIDE)))
def test_segment_boxes_match_flood_fill(mask):
    got_boxes, got_sizes = segment_boxes(mask)
    want = sorted((bounding(s), len(s)) for s in brute_components(mask))
    got = sorted((tuple(int(v) for v in b), int(n)) for b, n in zip(got_boxes, got_sizes, strict=True))
    assert got == want


coordinate = st.one_of(
    st.floats(-30, 70, allow_nan=False), st.just(math.nan), st.just(math.inf), st.integers(-30, 70)
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), max_size=4),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_clean_objects_keeps_exactly_the_visible_part(raw, height, width):
    """A kept box is the box's intersection with the image; a box is dropped exactly when that is empty
    or the box is malformed; every change is reported."""
    objects = [(3, list(b), False) for b in raw]
    kept, notes = clean_objects(objects, (height, width), "x")
    expected, changes = [], 0
    for box in raw:
        if not all(math.isfinite(v) for v in box) or box[2] < box[0] or box[3] < box[1]:
            changes += 1
            continue
        # Continuous extent of the inclusive box: [x0, x1] intersected with [0, W - 1].
        ix0, ix1 = max(box[0], 0), min(box[2], width - 1)
        iy0, iy1 = max(box[1], 0), min(box[3], height - 1)
        if ix1 < ix0 or iy1 < iy0:
            changes += 1
            continue
        clipped = [float(ix0), float(iy0), float(ix1), float(iy1)]
        changes += clipped != [float(v) for v in box]
        expected.append((3, clipped, False))
    assert kept == expected
    assert len(notes) == changes
    assert all(line.startswith("x: ") and "\n" not in line for line in notes)


@settings(max_examples=150, deadline=None)
@given(
    st.floats(-5, 50, allow_nan=False),
    st.floats(-5, 50, allow_nan=False),
    st.floats(-1, 30, allow_nan=False),
    st.floats(-1, 30, allow_nan=False),
)
def test_coco_boxes_are_the_touched_pixels(x, y, w, h):
    """Pixel i spans [i, i + 1): it belongs to the box when that overlaps [x, x + w) with positive length."""
    got = inclusive_box([x, y, w, h])
    if x + w <= x or y + h <= y:  # no extent in float arithmetic
        assert got is None
        return
    xs = [i for i in range(-10, 100) if min(i + 1, x + w) > max(i, x)]
    ys = [i for i in range(-10, 100) if min(i + 1, y + h) > max(i, y)]
    assert got == [float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1])]
    # The clamped variant agrees with clipping the touched pixels to the image.
    height, width = 30, 40
    kept, _ = clean_objects([(0, got, False)], (height, width), "c")
    if kept:
        assert coco_box([x, y, w, h], height, width) == kept[0][1]


@settings(max_examples=200, deadline=None)
@given(st.lists(boxes(0, 29), min_size=1, max_size=4), st.integers(5, 60), st.integers(5, 60))
def test_rescaled_boxes_stay_inside_and_ordered(raw, to_h, to_w):
    out = rescale_boxes(torch.tensor(raw, dtype=torch.float32), (30, 30), (to_h, to_w))
    assert bool((out[:, 0] >= 0).all() and (out[:, 2] <= to_w - 1).all())
    assert bool((out[:, 1] >= 0).all() and (out[:, 3] <= to_h - 1).all())
    assert bool((out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all())
