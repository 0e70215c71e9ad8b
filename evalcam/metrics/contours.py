"""Boxes of a binary map by OpenCV's contour rules, without OpenCV.

wsolevaluation (Choe et al., CVPR 2020, ``evaluation.py``) boxes a thresholded score map with
``cv2.findContours(mode=RETR_TREE, method=CHAIN_APPROX_SIMPLE)`` and ``cv2.boundingRect``, then writes the
box as ``x0, y0, x1, y1 = x, y, x + w, y + h`` clipped to ``width - 1`` / ``height - 1``. Read as an
inclusive box that is one pixel wider and taller than the segment (unless it touches the right/bottom
edge). This module reproduces those boxes from the contour rules of Suzuki & Abe (1985), which OpenCV
implements, so that MaxBoxAcc equals the reference number for number:

- foreground segments are 8-connected; every segment has one *outer* contour whose bounding rectangle is
  the segment's tight box;
- every *hole* (a 4-connected background component that does not reach the image border, after OpenCV's
  implicit one-pixel zero frame) has one hole contour through the foreground pixels 4-adjacent to it; its
  bounding rectangle is the hole's tight box grown by one pixel on every side;
- ``RETR_TREE`` returns both kinds; V2 (``multi_contour_eval``) boxes all of them, V1 takes the contour of
  largest ``cv2.contourArea``, the shoelace area of the traced border polygon through pixel centres
  (not the pixel count: a thin segment has a small polygon), the first one in OpenCV's list order on ties.
  OpenCV lists a contour tree in depth-first order, siblings in reverse raster order of where the scan met
  them. A hole's polygon never exceeds its segment's, which comes first, so V1 is always an outer contour.

Checked against ``opencv-python-headless`` 5.0.0 on random and hand-made maps (holes, nested segments,
segments touching every border); OpenCV is not a dependency.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)
FOUR = ndimage.generate_binary_structure(2, 1)
# OpenCV's chain-code directions (x right, y down): 0 = east, then counter-clockwise as displayed.
_DX = (1, 1, 0, -1, -1, -1, 0, 1)
_DY = (0, -1, -1, -1, 0, 1, 1, 1)


def outer_contour_area(mask: np.ndarray, y0: int, x0: int) -> float:
    """``cv2.contourArea`` of the outer border of the 8-connected segment of ``mask`` whose first pixel in
    raster order is ``(y0, x0)``; ``mask`` holds that segment only and has a zero frame (no index wraps).

    Suzuki-Abe border following as OpenCV does it: search clockwise from the west neighbour for the
    first foreground neighbour, then repeatedly search counter-clockwise from the direction just after
    the one pointing back, until the start pixel is left again towards that first neighbour.
    """
    s = 4
    for _ in range(8):
        s = (s - 1) & 7
        if mask[y0 + _DY[s], x0 + _DX[s]]:
            break
    else:
        return 0.0  # an isolated pixel: a one-point contour
    y1, x1 = y0 + _DY[s], x0 + _DX[s]
    y3, x3 = y0, x0
    xs, ys = [], []
    while True:
        for k in range(1, 9):
            t = (s + k) & 7
            if mask[y3 + _DY[t], x3 + _DX[t]]:
                break
        s = t
        y4, x4 = y3 + _DY[s], x3 + _DX[s]
        xs.append(x3)
        ys.append(y3)
        if y4 == y0 and x4 == x0 and y3 == y1 and x3 == x1:
            break
        y3, x3 = y4, x4
        s = (s + 4) & 7
    px, py = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    return float(abs(np.dot(px, np.roll(py, -1)) - np.dot(py, np.roll(px, -1))) / 2)


def _reference_box(y0: int, x0: int, y1: int, x1: int, height: int, width: int) -> list[int]:
    """wsolevaluation's ``x, y, x + w, y + h`` clipped, from a bounding rectangle with inclusive ends."""
    return [x0, y0, min(x1 + 1, width - 1), min(y1 + 1, height - 1)]


def _first_pixels(labels: np.ndarray, slices: list) -> list[tuple[int, int]]:
    """``(y, x)`` of each label's first pixel in raster order: the leftmost one in its box's top row."""
    firsts = []
    for label, s in enumerate(slices, start=1):
        row = labels[s[0].start, s[1]]
        firsts.append((s[0].start, s[1].start + int(np.argmax(row == label))))
    return firsts


def contour_boxes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """All ``RETR_TREE`` contour boxes of a binary ``[H, W]`` map in wsolevaluation's convention, and the
    row of the V1 box (largest contour area, OpenCV's order on ties); ``(zeros((0, 4)), -1)`` when empty.
    Rows ``0 .. K-1`` are the K segments' outer contours (in label order), the hole contours follow.
    """
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return np.zeros((0, 4), dtype=np.int64), -1
    # Work on the foreground's box plus a one-pixel margin: every margin pixel sees the image border
    # along its row or column, so the holes (and everything else) are those of the whole map.
    y0, x0 = max(int(rows[0]) - 1, 0), max(int(cols[0]) - 1, 0)
    crop = mask[y0 : int(rows[-1]) + 2, x0 : int(cols[-1]) + 2]
    labels, count = ndimage.label(crop, structure=EIGHT)
    segments = ndimage.find_objects(labels)
    boxes = [
        _reference_box(
            y0 + s[0].start, x0 + s[1].start, y0 + s[0].stop - 1, x0 + s[1].stop - 1, height, width
        )
        for s in segments
    ]
    holes, hole_count = ndimage.label(~crop, structure=FOUR)
    frame = set(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]).tolist())
    enclosed = hole_count > len(frame - {0})
    hole_slices = ndimage.find_objects(holes) if enclosed else []
    for label, s in enumerate(hole_slices, start=1):
        if label in frame:
            continue
        hy0, hx0, hy1, hx1 = y0 + s[0].start - 1, x0 + s[1].start - 1, y0 + s[0].stop, x0 + s[1].stop
        boxes.append(_reference_box(hy0, hx0, hy1, hx1, height, width))
    if count == 1:
        return np.asarray(boxes, dtype=np.int64), 0
    tree = _Tree(labels, segments, holes, hole_slices, frame)
    return np.asarray(boxes, dtype=np.int64), largest_outer_contour(tree)


class _Tree:
    """The segment/hole layout one binarized map needs for V1: labels, boxes, first pixels."""

    def __init__(self, labels: np.ndarray, segments: list, holes: np.ndarray, hole_slices: list, frame: set):
        self.labels, self.segments, self.holes = labels, segments, holes
        self.hole_slices, self.frame = hole_slices, frame
        self.firsts = _first_pixels(labels, segments)

    def area_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of each outer contour's polygon area.

        The polygon runs through the centres of the outer border pixels (those 4-adjacent to the outside
        background), inside the union of the segment's pixel squares with its holes filled (``filled``):
        ``filled - border <= area <= filled``; it also lies in the box through the extreme centres.
        """
        count = len(self.segments)
        labels = self.labels
        is_outside = np.zeros(int(self.holes.max()) + 1, dtype=bool)
        is_outside[list(self.frame - {0})] = True
        outside = is_outside[self.holes]
        outside = np.pad(outside, 1, constant_values=True)  # OpenCV's zero frame is outside too
        touches = outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
        border = np.bincount(labels[touches & (labels > 0)], minlength=count + 1)[1:]
        filled = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
        for label, s in enumerate(self.hole_slices, start=1):
            if s is None or label in self.frame:
                continue
            hy, hx = s[0].start, s[1].start + int(np.argmax(self.holes[s[0].start, s[1]] == label))
            filled[int(labels[hy, hx - 1]) - 1] += np.count_nonzero(self.holes[s] == label)
        box = np.array([(s[0].stop - s[0].start - 1) * (s[1].stop - s[1].start - 1) for s in self.segments])
        return filled - border, np.minimum(filled, box)


def largest_outer_contour(tree: _Tree) -> int:
    """Index (label - 1) of the segment whose outer contour ``max(contours, key=cv2.contourArea)`` picks."""
    segments = tree.segments
    if len(segments) == 1:
        return 0
    lower, upper = tree.area_bounds()
    # Only segments that might reach the best lower bound are traced (usually one clear winner: none).
    candidates = np.flatnonzero(upper >= lower.max()).tolist()
    if len(candidates) == 1:
        return candidates[0]
    areas: dict[int, float] = {}
    best_area = -1.0
    for k in sorted(candidates, key=lambda k: -upper[k]):
        if upper[k] < best_area:
            break
        s = segments[k]
        window = np.pad(tree.labels[s] == k + 1, 1)
        y0, x0 = tree.firsts[k]
        areas[k] = outer_contour_area(window, y0 - s[0].start + 1, x0 - s[1].start + 1)
        best_area = max(best_area, areas[k])
    tied = [k for k, area in areas.items() if area == best_area]
    if len(tied) == 1:
        return tied[0]
    order = _opencv_order(tree)
    return min(tied, key=lambda k: order[k])


def _opencv_order(tree: _Tree) -> np.ndarray:
    """Position of each segment's outer contour in OpenCV's ``RETR_TREE`` list: depth-first over the
    segment/hole tree, siblings in reverse raster order of their first pixel."""
    width = tree.labels.shape[1]
    hole_firsts = _first_pixels(tree.holes, tree.hole_slices)
    children: dict[tuple[str, int], list[tuple[int, str, int]]] = {}
    for k, (y, x) in enumerate(tree.firsts):
        # The scan meets a segment at its first pixel; the pixel west of it is background: the outside
        # (top level) or a hole, whose own parent is the segment west of the hole's first pixel.
        hole = 0 if x == 0 else int(tree.holes[y, x - 1])
        if hole == 0 or hole in tree.frame:
            children.setdefault(("top", 0), []).append((y * width + x, "seg", k))
            continue
        children.setdefault(("hole", hole), []).append((y * width + x, "seg", k))
        hy, hx = hole_firsts[hole - 1]
        owner = ("seg", int(tree.labels[hy, hx - 1]) - 1)
        node = (hy * width + hx, "hole", hole)
        if node not in children.setdefault(owner, []):
            children[owner].append(node)
    order = np.zeros(len(tree.firsts), dtype=np.int64)
    position = 0
    stack = sorted(children.get(("top", 0), []))  # popped from the end: reverse raster order
    while stack:
        _, kind, index = stack.pop()
        if kind == "seg":
            order[index] = position
        position += 1
        stack.extend(sorted(children.get((kind, index), [])))
    return order
